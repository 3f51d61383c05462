"""The server stack for more than one machine (issue 19): PostgreSQL, an S3-compatible artifact store, an MLflow
tracking server, a Prefect server and a process worker, every address 127.0.0.1 and every port a parameter
(``services.stack``)."""
