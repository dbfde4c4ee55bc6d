"""Scale-out: run a plan's nodes as Ray tasks on a cluster (``run.executor=ray``).

``connection`` joins the cluster once per process, ``placement`` turns a node into the Ray
resources it needs (a target's device, a whole worker for an exclusive stage), ``worker`` is
the task that finds or builds one node through the shared cache, and ``executor`` schedules
the plan's nodes as the local executor does. Ray is imported only here, only when asked for.
"""
