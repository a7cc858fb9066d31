package autoscale

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// ErrLostLeadership is returned by RunElected when this replica led and lost the Lease: the
// process should exit (and be restarted) rather than risk a second writer.
var ErrLostLeadership = errors.New("lost the leader Lease")

// ElectionConfig configures leader election on a coordination.k8s.io Lease (needs get,
// create and update on leases).
type ElectionConfig struct {
	Client    kubernetes.Interface
	Namespace string
	Lease     string
	Identity  string
	// LeaseDuration, RenewDeadline and RetryPeriod as client-go's (defaults 15 s, 10 s, 2 s).
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	// OnLeader is called with true when this replica starts leading and false when it
	// stops (for the leader metric).
	OnLeader func(bool)
	Log      *slog.Logger
}

// RunElected waits for the Lease and runs lead while holding it. It returns nil when ctx
// ends (releasing the Lease, so that a standby takes over at once), ErrLostLeadership when
// the Lease was lost while ctx was live, or lead's error.
func RunElected(ctx context.Context, cfg ElectionConfig, lead func(ctx context.Context) error) error {
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = 10 * time.Second
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Identity == "" || cfg.Lease == "" || cfg.Namespace == "" {
		return errors.New("autoscale: leader election needs a namespace, a lease name and an identity")
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Lease},
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	var (
		mu       sync.Mutex
		led      bool // OnStartedLeading ran
		finished bool // Run returned before it did: it must not lead
		leadErr  error
		done     = make(chan struct{})
	)
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.Lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				mu.Lock()
				if finished {
					mu.Unlock()
					return
				}
				led = true
				mu.Unlock()
				defer close(done)
				log.Info("autoscale: leading", "lease", cfg.Namespace+"/"+cfg.Lease, "identity", cfg.Identity)
				if cfg.OnLeader != nil {
					cfg.OnLeader(true)
				}
				if err := lead(ctx); err != nil && ctx.Err() == nil {
					mu.Lock()
					leadErr = err
					mu.Unlock()
					cancel()
				}
			},
			OnStoppedLeading: func() {
				if cfg.OnLeader != nil {
					cfg.OnLeader(false)
				}
			},
			OnNewLeader: func(id string) {
				if id != cfg.Identity {
					log.Info("autoscale: standing by; another replica leads", "leader", id, "lease", cfg.Namespace+"/"+cfg.Lease)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("autoscale: leader election: %w", err)
	}
	log.Info("autoscale: waiting for the leader Lease", "lease", cfg.Namespace+"/"+cfg.Lease, "identity", cfg.Identity)
	le.Run(ctx)
	mu.Lock()
	finished = true
	wasLeader := led
	mu.Unlock()
	if !wasLeader {
		return nil // ctx ended before this replica led
	}
	<-done // lead has returned: no write can follow
	mu.Lock()
	err = leadErr
	mu.Unlock()
	switch {
	case err != nil:
		return err
	case outer.Err() != nil:
		log.Info("autoscale: stopped leading and released the Lease", "lease", cfg.Namespace+"/"+cfg.Lease)
		return nil
	}
	log.Error("autoscale: lost the leader Lease", "lease", cfg.Namespace+"/"+cfg.Lease, "identity", cfg.Identity)
	return ErrLostLeadership
}
