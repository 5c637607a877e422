-- The prediction log's database, beside MLflow's (created by POSTGRES_DB).
CREATE DATABASE predictions OWNER mnistops;
