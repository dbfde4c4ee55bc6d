"""Publishing bundles: the writer, the signer, and the loader that runs on the device."""
