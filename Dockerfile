# The driftrag image: the stream job (and, from issue 4 on, the query service).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY operators ./operators
COPY index ./index
RUN pip install .
ENTRYPOINT ["driftrag"]
CMD ["run"]
