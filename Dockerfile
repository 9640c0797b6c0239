FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY settings settings
COPY budget budget
COPY tasks tasks
COPY pipeline pipeline
COPY simulator simulator
# The versions the tests ran with (constraints.txt, refreshed by `make lock`).
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system quotaflow
USER quotaflow
CMD ["celery", "-A", "pipeline", "worker", "-Q", "quotaflow,quotaflow.retry", "-P", "threads", "-c", "64", "-l", "info"]
