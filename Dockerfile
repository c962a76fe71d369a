# liveops in an empty image: the static binary, an empty /data for the database, nothing else.
#
#   CGO_ENABLED=0 go build -o liveops .
#   docker build -t liveops .
#   docker run -d --name liveops -p 8080:8080 -v liveops-data:/data liveops
#
# There is no build stage: the image takes the binary `CGO_ENABLED=0 go build` made (the
# same binary goreleaser or ko would produce), so building it needs no base image at all.
# The build context is cut down to that binary and deploy/data by .dockerignore.
FROM scratch

COPY liveops /liveops
# An empty directory owned by the user below. A named volume mounted on /data starts as a
# copy of it, owner included, so the server can create its database there. (scratch has no
# shell for RUN mkdir; deploy/data holds only a placeholder, which .dockerignore leaves out.)
COPY --chown=65532:65532 deploy/data/ /data/

# Every flag has an environment variable; these are the ones a container needs changed.
# Others (LIVEOPS_CORS_ORIGINS, LIVEOPS_TLS_CERT, LIVEOPS_TLS_KEY...) go on `docker run -e`.
ENV LIVEOPS_ADDR=:8080 \
    LIVEOPS_DB=/data/liveops.db \
    LIVEOPS_LOG_FORMAT=json \
    LIVEOPS_BOOTSTRAP_KEYS_FILE=/data/bootstrap-keys.env

# Not root: the uid and gid distroless calls "nonroot", numeric because scratch has no
# /etc/passwd to look a name up in.
USER 65532:65532
EXPOSE 8080
VOLUME /data
ENTRYPOINT ["/liveops"]
