-- The basic-auth app keeps its users and permissions in their own database.
CREATE DATABASE mlflow_auth OWNER mlflow;
