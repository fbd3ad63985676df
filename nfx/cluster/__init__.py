"""Clusters of NF instances (issue 13): sharing.py runs a testbed's batched sharing across its
agents; manage.py brings clusters up and down (etcd, membership, the NAT pool's owners, the
stamper). The global state's schema in etcd is nfx/etcd/globalstate.py, below the agents, which
keep their own membership leases and publish their counters. Sits above nfx.agent in the import
order."""
