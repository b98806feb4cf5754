"""Kafka I/O, the event contract, dataflow wiring, the workload generator and the CLI."""
