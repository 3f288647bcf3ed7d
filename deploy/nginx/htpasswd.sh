#!/bin/sh
# Writes the nginx basic-auth file from PROXY_USER and PROXY_PASSWORD, so the password lives
# only in .env, never in the repository. The proxy container runs it at every start; a local
# cluster runs it once: `PROXY_USER=... PROXY_PASSWORD=... sh deploy/nginx/htpasswd.sh FILE`.
# The hash is SHA-512 crypt ($6$), computed by perl's crypt() (perl-base is in every Debian
# image, including nginx's) and checked by nginx through the same libc.
set -eu

out=${1:?usage: htpasswd.sh OUTPUT_FILE}
: "${PROXY_USER:?set PROXY_USER}"
: "${PROXY_PASSWORD:?set PROXY_PASSWORD}"
case $PROXY_USER in
    *:*) echo "PROXY_USER must not contain ':'" >&2; exit 1 ;;
esac

hash=$(perl -e '
    my @chars = ("a".."z", "A".."Z", 0..9, ".", "/");
    my $salt = join "", map { $chars[int rand @chars] } 1..16;
    print crypt($ENV{PROXY_PASSWORD}, "\$6\$$salt\$");
')
case $hash in
    '$6$'*) ;;
    *) echo "this libc cannot make SHA-512 crypt hashes" >&2; exit 1 ;;
esac

# nginx worker processes (an unprivileged user) read the file on every request.
printf '%s:%s\n' "$PROXY_USER" "$hash" > "$out.tmp"
chmod 0644 "$out.tmp"
mv "$out.tmp" "$out"
