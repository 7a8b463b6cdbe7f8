#!/bin/bash
# The hand-made floor of a cold deploy (../shared/bench/floor.sh) for DB database hosts
# (default 3) and a router: the same packages and barriers (etcd quorum, leader, every
# replica streaming, a write through 5000 read on 5001), done with docker exec, no SSH,
# no facts, no verification. Two differences from the shared script, both so that the
# floor is measured as pgha's lab hosts are set up: the hosts keep /usr and /var/lib on
# volumes (installs skip the fuse overlay, as on `pgha lab up`'s hosts), and etcd has
# as many members as pgha gives DB hosts (3, or 5 from 5 hosts on). Prints the second
# at which each barrier was reached.
set -e
DB=${DB:-3}
IMG=${IMG:-$(docker images pgha-lab --format "{{.Repository}}:{{.Tag}}" | head -1)}; NET=pgha-probe-n; SUB=10.79.0
hosts(){ for i in $(seq 1 "$DB"); do echo p-db$i; done; echo p-router1; }
cleanup(){ docker rm -f -v $(hosts) >/dev/null 2>&1 || true; docker network rm $NET >/dev/null 2>&1 || true; }; cleanup; trap cleanup EXIT
docker network create --subnet $SUB.0/24 $NET >/dev/null 2>&1 || true
t0=$EPOCHREALTIME
ts(){ awk -v a="$EPOCHREALTIME" -v b="$t0" -v w="$*" 'BEGIN{printf "%.1fs %s\n", a-b, w}'; }
run(){ docker run -d --name "$1" --hostname "$2" --network $NET --ip "$3" --cap-add SYS_ADMIN --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v /usr -v /var/lib --cgroupns=host "$IMG" /sbin/init >/dev/null; }
for i in $(seq 1 "$DB"); do run p-db$i db$i $SUB.1$i; done
run p-router1 router1 $SUB.20
sleep 3; ts containers-up
inst(){ docker exec $1 bash -c "export DEBIAN_FRONTEND=noninteractive; mkdir -p /etc/postgresql-common; echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $2 >/dev/null 2>&1"; }
for i in $(seq 1 "$DB"); do inst p-db$i "postgresql-17 patroni etcd-server etcd-client python3-etcd python3-psycopg2 prometheus-postgres-exporter" & done
inst p-router1 haproxy &
wait; ts packages-installed
ETCD=$(( DB >= 5 ? 5 : 3 ))
IC=""; EP=""; for i in $(seq 1 $ETCD); do IC="$IC${IC:+,}db$i=http://$SUB.1$i:2380"; EP="$EP${EP:+,}$SUB.1$i:2379"; done
for i in $(seq $((ETCD + 1)) "$DB"); do docker exec p-db$i bash -c "systemctl stop etcd; systemctl disable etcd >/dev/null 2>&1"; done
for i in $(seq 1 $ETCD); do docker exec p-db$i bash -c "systemctl stop etcd; rm -rf /var/lib/etcd/default; cat > /etc/default/etcd <<E
ETCD_NAME=db$i
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_PEER_URLS=http://$SUB.1$i:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$SUB.1$i:2380
ETCD_LISTEN_CLIENT_URLS=http://$SUB.1$i:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$SUB.1$i:2379
ETCD_INITIAL_CLUSTER=$IC
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=probe
E
systemctl start --no-block etcd"; done
until docker exec p-db1 etcdctl --endpoints=$EP endpoint health >/dev/null 2>&1; do sleep 0.2; done; ts etcd-quorum
pat(){ i=$1; docker exec p-db$i bash -c "mkdir -p /var/lib/pgha && chown postgres /var/lib/pgha; cat > /etc/patroni/config.yml <<E
scope: pg-ha
name: db$i
restapi: {listen: 0.0.0.0:8008, connect_address: $SUB.1$i:8008}
etcd3: {hosts: [${EP//,/, }]}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 5
    retry_timeout: 5
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters: {wal_log_hints: 'on'}
  initdb: [{encoding: UTF8}, data-checksums]
postgresql:
  listen: 0.0.0.0:5432
  connect_address: $SUB.1$i:5432
  data_dir: /var/lib/pgha/17
  bin_dir: /usr/lib/postgresql/17/bin
  pg_hba:
    - local all all peer
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator $SUB.0/24 scram-sha-256
    - host all all $SUB.0/24 scram-sha-256
  authentication:
    superuser: {username: postgres, password: secret}
    replication: {username: replicator, password: rsecret}
    rewind: {username: rewinder, password: wsecret}
E
chown postgres /etc/patroni/config.yml; chmod 600 /etc/patroni/config.yml; systemctl start patroni"; }
pat 1
until [ "$(docker exec p-db1 curl -s -o /dev/null -w '%{http_code}' localhost:8008/primary)" = 200 ]; do sleep 0.2; done; ts leader-ready
for i in $(seq 2 "$DB"); do pat $i & done; wait
until [ "$(docker exec p-db1 curl -s localhost:8008/cluster | python3 -c 'import sys,json; m=json.load(sys.stdin)["members"]; print(sum(1 for x in m if x["state"] in ("streaming",)))')" = $((DB - 1)) ]; do sleep 0.3; done; ts replicas-streaming
servers=""; for i in $(seq 1 "$DB"); do servers="$servers    server db$i $SUB.1$i:5432 check port 8008
"; done
docker exec p-router1 bash -c "cat > /etc/haproxy/haproxy.cfg <<E
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 4s
    timeout client 30m
    timeout server 30m
    timeout check 2s
listen stats
    mode http
    bind *:8404
    stats enable
    stats uri /
listen primary
    bind *:5000
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
$servers
listen replicas
    bind *:5001
    balance roundrobin
    option httpchk OPTIONS /replica
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
$servers
E
systemctl restart haproxy"
until PGPASSWORD=secret psql -h $SUB.20 -p 5000 -U postgres -c 'create table if not exists t(x int); insert into t values (1)' >/dev/null 2>&1; do sleep 0.2; done; ts write-via-5000
until [ "$(PGPASSWORD=secret psql -h $SUB.20 -p 5001 -U postgres -Atc 'select count(*) from t' 2>/dev/null)" = 1 ]; do sleep 0.2; done; ts read-via-5001
