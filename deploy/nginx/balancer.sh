#!/bin/sh
# The balancer image's entry point: nginx (deploy/nginx/nginx.conf) as the main process, and a
# watcher that resolves the replicas' service name every VAE_BALANCER_RESOLVE_S seconds and
# reloads nginx when its set of addresses changes. nginx 1.22 (Debian 12) resolves an
# upstream's names only when it loads its configuration, and replicas come and go: `--scale`
# adds some, and a replica restarted after a crash may come back on another address. A reload
# (SIGHUP) is graceful: requests in flight finish on the old worker processes.
set -eu
name=${VAE_BALANCER_UPSTREAM:-api}
interval=${VAE_BALANCER_RESOLVE_S:-2}

addresses() {
    getent ahostsv4 "$name" | awk '{ print $1 }' | sort -u | tr '\n' ' '
}

watch() {
    known=$(addresses || true)
    echo "vae-balancer: $name is $known" >&2
    while sleep "$interval"; do
        current=$(addresses || true)
        if [ -n "$current" ] && [ "$current" != "$known" ]; then
            echo "vae-balancer: $name is now $current (was $known): reloading nginx" >&2
            kill -HUP "$1"
            known=$current
        fi
    done
}

# The watcher keeps running as a child of nginx, which takes over this process id.
watch "$$" &
exec nginx -e stderr -c /etc/vae-balancer/nginx.conf
