"""Stand-ins for infrastructure that cannot run on these machines (a Consul agent), for tests and benches."""
