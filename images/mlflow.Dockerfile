# The MLflow tracking server (registry + artifacts) for compose.yaml, with the Postgres driver.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
