#!/bin/sh
# Makes the test certificates in this directory (needs only `openssl`; run it from anywhere):
#
#   ca.pem                the test cluster's certificate authority (its key is thrown away)
#   node.pem, node.key    a process of that cluster: signed by ca.pem, for 127.0.0.1 and
#                         localhost, usable as server and as client (every process is both)
#   rogue-ca.pem          another authority
#   rogue.pem, rogue.key  a process signed by rogue-ca.pem: right names, wrong authority
#
# The same steps make a real cluster's certificates: one authority, and one certificate per
# host whose names (subjectAltName) are the host's addresses as the cluster file and the
# `--listen` addresses write them. Keep the authority's key off the hosts.
#
# The files are checked in so tests need no openssl; they last 100 years. The keys are test
# keys: never use them for anything else.
set -eu
cd "$(dirname "$0")"
days=36500

authority() { # NAME SUBJECT
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.pem" -days "$days" -subj "$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

process() { # NAME AUTHORITY
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=strata test process"
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -out "$1.pem" -days "$days" -extfile "$1.ext"
    rm "$1.csr" "$1.ext"
}

authority ca "/CN=strata test CA"
process node ca
authority rogue-ca "/CN=strata rogue test CA"
process rogue rogue-ca
rm -f ./*.srl ca.key rogue-ca.key
