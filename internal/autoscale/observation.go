package autoscale

import "time"

// Observation is everything the policy sees at one decision. A Signals implementation
// builds it; a missing signal is reported in it (QueueSignal.Available, zero HeartbeatAt or
// CPUAt) rather than as an error, so that the policy can fail static.
type Observation struct {
	// Time is when the observation was taken; every age is measured from it.
	Time     time.Time     `json:"time"`
	Queues   []QueueSignal `json:"queues"`
	Pods     []PodSignal   `json:"pods"`
	Workload Workload      `json:"workload"`
	Flags    Flags         `json:"flags"`
}

// QueueSignal is one queue's broker truth and its measured rates.
type QueueSignal struct {
	Name string `json:"name"`
	// Available is false when the broker could not be read on this poll; Error says why.
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
	// SampledAt is when the broker took the sample (the management API samples every few
	// seconds, so it can be older than the poll).
	SampledAt time.Time `json:"sampled_at"`
	// Ready is the runnable backlog: messages_ready on RabbitMQ, the sum over the priority
	// sub-lists on Redis.
	Ready int `json:"ready"`
	// InFlight is delivered and not yet acknowledged (unacked, prefetched or running).
	InFlight int `json:"in_flight"`
	// Held is waiting for an ETA or countdown; not runnable yet, so not backlog.
	Held int `json:"held"`
	// ArrivalRate λ is the publish rate in messages per second over the sampling interval
	// that ends at SampledAt.
	ArrivalRate float64 `json:"arrival_rate"`
	// ServiceRate μ is tasks completed per second per busy slot, measured from the workers'
	// processed counters and busy time; 0 means not measured yet.
	ServiceRate float64 `json:"service_rate"`
	// TaskP99 is the 99th percentile of task run time; 0 means unknown.
	TaskP99 time.Duration `json:"task_p99"`
}

// PodSignal is one worker pod as the API server and its heartbeats show it.
type PodSignal struct {
	Name string `json:"name"`
	// Revision tells old and new pods apart during a rollout (pod-template-hash).
	Revision    string `json:"revision,omitempty"`
	Ready       bool   `json:"ready"`
	Terminating bool   `json:"terminating,omitempty"`
	// Slots is the pod's concurrency; 0 means unknown (Config.Concurrency is used).
	Slots int `json:"slots"`
	// Active is the number of running tasks at HeartbeatAt; a zero HeartbeatAt means no
	// heartbeat yet (the pod counts as busy for scale-in).
	Active      int       `json:"active"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	// OldestTask is the run time, at HeartbeatAt, of the pod's longest-running task.
	OldestTask time.Duration `json:"oldest_task"`
	// CPU is usage ÷ request from metrics.k8s.io, sampled at CPUAt (zero: no sample).
	CPU   float64   `json:"cpu"`
	CPUAt time.Time `json:"cpu_at"`
}

// Workload is the scaled Deployment.
type Workload struct {
	Name string `json:"name"`
	// SpecReplicas is scale.spec.replicas: the only "current count" the policy uses, so that
	// surge or canary pods are never counted twice.
	SpecReplicas int `json:"spec_replicas"`
	// StatusReplicas, ReadyReplicas and UpdatedReplicas are informational.
	StatusReplicas  int `json:"status_replicas"`
	ReadyReplicas   int `json:"ready_replicas"`
	UpdatedReplicas int `json:"updated_replicas"`
	// Paused is the fleet.denis.io/paused: "true" annotation; PausedReason its reason.
	Paused       bool   `json:"paused"`
	PausedReason string `json:"paused_reason,omitempty"`
	// RollingOut is true while a rollout, canary or rollback is in progress.
	RollingOut bool `json:"rolling_out"`
	// OtherWriters names every HPA or KEDA ScaledObject that targets this workload.
	OtherWriters []string `json:"other_writers,omitempty"`
	// GracePeriod is the pods' terminationGracePeriodSeconds (0: Config.GracePeriod).
	GracePeriod time.Duration `json:"grace_period"`
}

// Flags are the fleet flags the policy reads.
type Flags struct {
	// EmergencyStop is FLEET_EMERGENCY_STOP=true.
	EmergencyStop bool `json:"emergency_stop"`
	// AsyncOff is ASYNC_ENABLED=false: producers route no work to the fleet, so the policy
	// drops the step headroom and may go to its minimum without a stabilisation window.
	AsyncOff bool `json:"async_off"`
}
