#!/usr/bin/env bash
# start-kube.sh: a throwaway Kubernetes control plane on loopback for tests (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok with one fake node), built by scripts/k8s-tools.sh.
#
#   scripts/start-kube.sh start    start everything, wait for /readyz, print KUBECONFIG=<file>
#   scripts/start-kube.sh stop     stop what the PID files in $D name, then remove $D unless KEEP=1
#
# Env (all optional):
#   D               state dir (PID files, logs, certificates, etcd data, kubeconfig);
#                   default /tmp/fleet-kube-$USER
#   BIN             binaries (default: what scripts/k8s-tools.sh builds or has cached)
#   ETCD_PORT       etcd client port (peer port is ETCD_PEER_PORT); APISERVER_PORT;
#                   default: free ports picked at random, so several runs can coexist
#   WITH_KCM WITH_SCHED WITH_KWOK   1 (default) or 0
#   KWOK_NODES      fake nodes to create (default 1): kwok-node-0 …
#   WATCH_PID       stop everything when this process exits (the test binary that started us);
#                   with REMOVE_ON_EXIT=1 also remove $D then
#   APISERVER_EXTRA ETCD_EXTRA extra flags
# Users in the kubeconfig: context "e2e" (admin, system:masters) and "autoscaler" (token of user
# "autoscaler", no rights until a RoleBinding names it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=${D:-/tmp/fleet-kube-${USER:-$(id -un)}}
WITH_KCM=${WITH_KCM:-1}
WITH_SCHED=${WITH_SCHED:-1}
WITH_KWOK=${WITH_KWOK:-1}
KWOK_NODES=${KWOK_NODES:-1}
PROCS="watchdog kwok sched kcm apiserver etcd"

log() { echo "start-kube: $*" >&2; }

stop() {
	local p pid
	for p in $PROCS; do
		[ -f "$D/$p.pid" ] || continue
		pid=$(cat "$D/$p.pid")
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
		rm -f "$D/$p.pid"
	done
}

# free_port: a port nobody listens on, below the kernel's ephemeral range (where the
# outgoing connections of the tests running beside this one take their ports: a port
# picked there can be taken before etcd or the apiserver binds it).
free_port() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	[ "$lo" -gt 21000 ] || lo=50000
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % (lo - 20000)))
		if ! ss -Hltan "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}

certs() {
	local P=$1 ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
	[ -f "$P/tokens.csv" ] && return
	mkdir -p "$P"
	# shellcheck disable=SC2086 # $ec is a list of options
	{
		openssl req -x509 $ec -days 3650 -subj /CN=fleet-e2e-ca -keyout "$P/ca.key" -out "$P/ca.crt"
		openssl req $ec -subj /CN=kube-apiserver -keyout "$P/apiserver.key" -out "$P/apiserver.csr"
		printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$P/srv.ext"
		openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 3650 -extfile "$P/srv.ext" -out "$P/apiserver.crt"
		openssl req $ec -subj /O=system:masters/CN=e2e-admin -keyout "$P/admin.key" -out "$P/admin.csr"
		printf 'extendedKeyUsage=clientAuth\n' >"$P/cli.ext"
		openssl x509 -req -in "$P/admin.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 3650 -extfile "$P/cli.ext" -out "$P/admin.crt"
		openssl ecparam -name prime256v1 -genkey -noout -out "$P/sa.key"
		openssl ec -in "$P/sa.key" -pubout -out "$P/sa.pub"
	} 2>/dev/null
	printf '%s\n' 'e2e-admin-token,e2e-admin,1,"system:masters"' 'e2e-autoscaler-token,autoscaler,3' >"$P/tokens.csv"
}

# api METHOD PATH [JSON]: an admin request to the apiserver.
api() {
	curl -sf --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" \
		-H 'Content-Type: application/json' -X "$1" "https://127.0.0.1:$APISERVER_PORT$2" ${3:+--data "$3"}
}

kwok_node() {
	local name=$1
	api POST /api/v1/nodes "$(
		cat <<EOF
{"apiVersion":"v1","kind":"Node","metadata":{"name":"$name","annotations":{"kwok.x-k8s.io/node":"fake","node.alpha.kubernetes.io/ttl":"0"},
 "labels":{"kubernetes.io/hostname":"$name","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","type":"kwok"}},
 "status":{"capacity":{"cpu":"64","memory":"256Gi","pods":"500"},"allocatable":{"cpu":"64","memory":"256Gi","pods":"500"}}}
EOF
	)" >/dev/null
}

start() {
	local BIN P t0 i
	BIN=${BIN:-$("$ROOT/scripts/k8s-tools.sh")}
	ETCD_PORT=${ETCD_PORT:-$(free_port)}
	ETCD_PEER_PORT=${ETCD_PEER_PORT:-$(free_port)}
	APISERVER_PORT=${APISERVER_PORT:-$(free_port)}
	mkdir -p "$D"
	stop
	rm -rf "$D/etcd-data"
	P=$D/pki
	certs "$P"
	echo "$APISERVER_PORT" >"$D/apiserver.port"

	# Each daemon is a plain "prog … &" line so that $! is its own PID.
	# shellcheck disable=SC2086 # *_EXTRA are lists of flags
	"$BIN/etcd" --name e2e --data-dir "$D/etcd-data" --log-level warn --unsafe-no-fsync ${ETCD_EXTRA:-} \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" >"$D/etcd.log" 2>&1 &
	echo $! >"$D/etcd.pid"
	# shellcheck disable=SC2086
	"$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
		--tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
		--client-ca-file "$P/ca.crt" --token-auth-file "$P/tokens.csv" --authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
		--service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none ${APISERVER_EXTRA:-} >"$D/apiserver.log" 2>&1 &
	echo $! >"$D/apiserver.pid"
	if [ -n "${WATCH_PID:-}" ]; then
		(
			trap '' HUP
			while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done
			PROCS=${PROCS#watchdog }
			stop
			rm -f "$D/watchdog.pid"
			[ "${REMOVE_ON_EXIT:-0}" = 1 ] && rm -rf "$D"
		) </dev/null >/dev/null 2>&1 &
		echo $! >"$D/watchdog.pid"
	fi

	cat >"$D/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$P/ca.crt"}
users:
- {name: admin, user: {client-certificate: "$P/admin.crt", client-key: "$P/admin.key"}}
- {name: autoscaler, user: {token: e2e-autoscaler-token}}
contexts:
- {name: e2e, context: {cluster: e2e, user: admin}}
- {name: autoscaler, context: {cluster: e2e, user: autoscaler}}
current-context: e2e
EOF

	t0=$(date +%s%N)
	until api GET /readyz >/dev/null 2>&1; do
		if ! kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null || [ $((($(date +%s%N) - t0) / 1000000000)) -ge 90 ]; then
			log "kube-apiserver not ready; see $D/apiserver.log and $D/etcd.log"
			tail -20 "$D/apiserver.log" >&2 || true
			# A port taken by someone else shows in etcd's log only ("address already in
			# use"); the caller starts again on new ports when it reads that.
			tail -5 "$D/etcd.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.1
	done
	log "apiserver ready on 127.0.0.1:$APISERVER_PORT after $((($(date +%s%N) - t0) / 1000000)) ms"

	if [ "$WITH_KCM" = 1 ]; then
		"$BIN/kube-controller-manager" --kubeconfig "$D/kubeconfig" --authentication-kubeconfig "$D/kubeconfig" \
			--authorization-kubeconfig "$D/kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
			--controllers "${KCM_CONTROLLERS:-deployment-controller,replicaset-controller,serviceaccount-controller,garbage-collector-controller,namespace-controller,node-lifecycle-controller,disruption-controller}" \
			--node-monitor-period 1s \
			--service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" --use-service-account-credentials=false >"$D/kcm.log" 2>&1 &
		echo $! >"$D/kcm.pid"
	fi
	if [ "$WITH_SCHED" = 1 ]; then
		"$BIN/kube-scheduler" --kubeconfig "$D/kubeconfig" --authentication-kubeconfig "$D/kubeconfig" \
			--authorization-kubeconfig "$D/kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false >"$D/sched.log" 2>&1 &
		echo $! >"$D/sched.pid"
	fi
	if [ "$WITH_KWOK" = 1 ]; then
		HOME=$D "$BIN/kwok" --kubeconfig "$D/kubeconfig" --config "$BIN/kwok-stages.yaml" --manage-all-nodes=true \
			--cidr 10.244.0.0/16 --node-ip 10.1.0.1 >"$D/kwok.log" 2>&1 &
		echo $! >"$D/kwok.pid"
		for ((i = 0; i < KWOK_NODES; i++)); do
			kwok_node "kwok-node-$i" || { log "creating node kwok-node-$i failed"; stop; exit 1; }
		done
	fi
	echo "KUBECONFIG=$D/kubeconfig"
}

case "${1:-start}" in
start) start ;;
stop)
	stop
	[ "${KEEP:-0}" = 1 ] || rm -rf "$D"
	;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
