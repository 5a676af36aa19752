#!/bin/sh
# Run by the nginx image's entrypoint before nginx starts: serve HTTPS when certificates are mounted.
set -eu
mkdir -p /etc/nginx/levee-tls.d
if [ -s /etc/nginx/certs/tls.crt ] && [ -s /etc/nginx/certs/tls.key ]; then
    ln -sf /etc/nginx/levee/tls.conf /etc/nginx/levee-tls.d/tls.conf
    echo "levee: TLS on (certificates found in /etc/nginx/certs)"
else
    rm -f /etc/nginx/levee-tls.d/tls.conf
    echo "levee: no tls.crt/tls.key in /etc/nginx/certs: plain HTTP only"
fi
