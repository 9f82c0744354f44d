# davcoll: WebDAV for collections, embedded backend on a volume.
#   docker build -t davcoll .
#   docker run -p 8080:8080 -v davcoll-data:/data davcoll
#   docker run --rm -v davcoll-data:/data davcoll token create   # then use it as the password
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY davcoll ./davcoll
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --home /data davcoll && mkdir -p /data && chown davcoll /data
USER davcoll
VOLUME /data
EXPOSE 8080
ENV DAVCOLL_DATA_DIR=/data
ENTRYPOINT ["davcoll"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
