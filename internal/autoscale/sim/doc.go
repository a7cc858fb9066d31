// Package sim is the autoscaler's deterministic discrete-event simulator
// (autoscaling.md §6.1 A): a RabbitMQ-like broker (ready and unacked counts, a management
// API that samples every 5 s and can be unreachable), worker pods (start delay, concurrency,
// prefetch, exponential or long service times, CPU per busy slot, graceful termination with
// a grace period), the ReplicaSet and a canary rollout controller behind one simulated
// /scale, and five controllers on it: the HPA on CPU, KEDA queue length, KEDA queue length +
// message rate, ours (the unmodified autoscale.Policy driven through autoscale.Loop) and the
// perfect-foresight oracle. It owns the traces T0–T6, the metrics of §6.3, the baselines'
// grid search and the report; a run is a pure function of its setup, trace and seed.
package sim
