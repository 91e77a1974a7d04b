#!/usr/bin/env bash
# Regenerates the emulator's TEST-ONLY certificate authority and server certificate (--rbac
# serves https with them: client-go sends bearer tokens only over TLS). The keys are public;
# they protect nothing. Valid for 100 years. Run from this directory; needs openssl.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 36500 -sha256 \
  -subj "/CN=kube-emulator-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kube-emulator"
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 36500 -sha256 \
  -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes.default.svc")
rm -f server.csr ca.srl ca.key
