package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"rekey/providers/storage"
)

// Leases. A run owns its run id and every location it writes (the run's
// ledger folder, the target DEK table, the target dataset) through a lease
// object in each: `_rekey.lease.<generation>.json`. A lease is taken by
// creating the next generation exclusively (local files: create-exclusive;
// S3: If-None-Match; OSS: forbid-overwrite), so of two runs that race, one
// wins. The holder rewrites its generation with a later expiry while it
// lives; a run whose holder's lease has expired (or was released, or whose
// holder process is gone on this same host) takes over by creating the
// next generation, and a holder that finds a newer generation knows it lost
// the lease and stops.
//
// Limits: expiry compares clocks of different machines; keep them within a
// few seconds (NTP). Lease objects are small and stay behind (names start
// with "_", so no listing of data sees them); generations must stay
// contiguous, so deleting lease objects by hand while a run may be live
// breaks the exclusion. A nested target (one run writes /out, another
// /out/2026) is not detected.

// ErrLeaseHeld is returned when another live run holds a lease.
var ErrLeaseHeld = errors.New("held by another run")

// DefaultLeaseTTL is how long a lease lives without renewal.
const DefaultLeaseTTL = 60 * time.Second

// maxLeaseFile caps a lease object read back.
const maxLeaseFile = 64 << 10

// LeaseHolder says who holds a lease.
type LeaseHolder struct {
	RunID   string    `json:"run_id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Token   string    `json:"token"`
	// Boot and PIDNS identify the kernel boot and PID namespace of the
	// holder: containers often share a host name but not their PIDs, so
	// "its pid is gone" is only believed when both match ours.
	Boot  string `json:"boot,omitempty"`
	PIDNS string `json:"pid_ns,omitempty"`
}

func (h LeaseHolder) String() string {
	return fmt.Sprintf("run %s, host %s, pid %d, started %s", h.RunID, h.Host, h.PID, h.Started.Format(time.RFC3339))
}

type leaseFile struct {
	Format   string      `json:"format"`
	Holder   LeaseHolder `json:"holder"`
	Expires  time.Time   `json:"expires"`
	Released bool        `json:"released,omitempty"`
}

const leaseFormat = "rekey-lease/1"

// Lease is a set of held leases, renewed in the background until Release.
type Lease struct {
	holder LeaseHolder
	ttl    time.Duration
	held   []heldLease

	mu      sync.Mutex
	lost    error
	renewed time.Time // start of the last renewal that succeeded
	cancel  context.CancelFunc
	done    chan struct{}
}

type heldLease struct {
	field, loc string
	gen        int
}

// LeaseLocations are the locations a run writes, by job field, deduplicated.
func LeaseLocations(j *Job) [][2]string {
	var out [][2]string
	seen := map[string]bool{}
	add := func(field, loc string) {
		if loc == "" || seen[normLoc(loc)] {
			return
		}
		seen[normLoc(loc)] = true
		out = append(out, [2]string{field, loc})
	}
	add("ledger (run "+j.RunID+")", storage.Join(j.Ledger, "run_id="+j.RunID))
	add("target.deks", j.Target.DEKs)
	add("target.data", j.Target.Data)
	return out
}

func leasePath(loc string, gen int) string {
	return storage.Join(loc, fmt.Sprintf("_rekey.lease.%d.json", gen))
}

// AcquireLease takes the lease of every location j writes, or returns an
// error wrapping ErrLeaseHeld that names the holder. onLost is called (once)
// if a lease is lost later, e.g. to cancel the run. ttl 0 is
// DefaultLeaseTTL.
func AcquireLease(ctx context.Context, j *Job, ttl time.Duration, onLost func(error)) (*Lease, error) {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	host, _ := os.Hostname()
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	l := &Lease{holder: LeaseHolder{RunID: j.RunID, Host: host, PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second),
		Token: hex.EncodeToString(tok[:]), Boot: bootID(), PIDNS: pidNamespace()}, ttl: ttl, done: make(chan struct{}), renewed: time.Now()}
	for _, fl := range LeaseLocations(j) {
		gen, err := l.take(ctx, fl[0], fl[1])
		if err != nil {
			l.release(context.WithoutCancel(ctx))
			return nil, err
		}
		l.held = append(l.held, heldLease{field: fl[0], loc: fl[1], gen: gen})
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go l.renew(rctx, onLost)
	return l, nil
}

// take acquires the lease of one location and returns its generation.
func (l *Lease) take(ctx context.Context, field, loc string) (int, error) {
	for attempt := 0; attempt < 5; attempt++ {
		gen, err := lastGeneration(ctx, loc)
		if err != nil {
			return 0, fmt.Errorf("lease on %s %s: %w", field, loc, err)
		}
		if gen > 0 {
			cur, err := readLease(ctx, leasePath(loc, gen))
			if err != nil {
				return 0, fmt.Errorf("lease on %s %s: %w", field, loc, err)
			}
			if why, free := l.free(cur); !free {
				return 0, fmt.Errorf("%s %s is %w (%s); %s", field, loc, ErrLeaseHeld, cur.Holder, why)
			}
		}
		body, err := l.body(time.Now().Add(l.ttl), false)
		if err != nil {
			return 0, err
		}
		err = storage.CreateExclusive(ctx, leasePath(loc, gen+1), body)
		if err == nil {
			return gen + 1, nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return 0, fmt.Errorf("lease on %s %s: %w", field, loc, err)
		}
		// Another run took this generation first: look again.
	}
	return 0, fmt.Errorf("%s %s: %w (other runs took its lease 5 times while this one tried; try again later)", field, loc, ErrLeaseHeld)
}

// free reports whether a current lease can be taken over, or why not.
func (l *Lease) free(cur *leaseFile) (why string, ok bool) {
	if cur.Released {
		return "", true
	}
	if time.Now().After(cur.Expires) {
		return "", true
	}
	if cur.Holder.Host == l.holder.Host && cur.Holder.Boot != "" && cur.Holder.Boot == l.holder.Boot &&
		cur.Holder.PIDNS != "" && cur.Holder.PIDNS == l.holder.PIDNS &&
		cur.Holder.PID > 0 && cur.Holder.PID != l.holder.PID && syscall.Kill(cur.Holder.PID, 0) == syscall.ESRCH {
		return "", true // its process is gone from this machine
	}
	left := time.Until(cur.Expires).Round(time.Second)
	return fmt.Sprintf("wait for it to finish; if that process is gone, its lease expires in %s and can then be taken over (re-run then, with --resume to continue that run)", left), false
}

func (l *Lease) body(expires time.Time, released bool) ([]byte, error) {
	return json.MarshalIndent(leaseFile{Format: leaseFormat, Holder: l.holder, Expires: expires.UTC(), Released: released}, "", "  ")
}

func readLease(ctx context.Context, path string) (*leaseFile, error) {
	b, err := storage.ReadAll(ctx, path, maxLeaseFile)
	if err != nil {
		return nil, err
	}
	var lf leaseFile
	if err := json.Unmarshal(b, &lf); err != nil || lf.Format != leaseFormat {
		return nil, fmt.Errorf("%s is not a rekey lease (%v): something else wrote it; move it away only if no rekey run uses this location", path, err)
	}
	return &lf, nil
}

// lastGeneration finds the newest lease generation at loc (0 if none).
// Generations are contiguous from 1, so a galloping search finds the last
// in O(log n) existence checks.
func lastGeneration(ctx context.Context, loc string) (int, error) {
	exists := func(g int) (bool, error) { return storage.Exists(ctx, leasePath(loc, g)) }
	ok, err := exists(1)
	if err != nil || !ok {
		return 0, err
	}
	lo, hi := 1, 2 // lo exists; hi unknown
	for {
		ok, err := exists(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 { // lo exists, hi does not
		mid := (lo + hi) / 2
		ok, err := exists(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// renew rewrites every held lease with a later expiry at a third of the
// TTL, and checks no newer generation appeared (someone took it over after
// a missed renewal). A lease that cannot be renewed before it expires is
// lost.
func (l *Lease) renew(ctx context.Context, onLost func(error)) {
	defer close(l.done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		began := time.Now()
		err := l.renewOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			lastOK = began
			l.mu.Lock()
			l.renewed = began
			l.mu.Unlock()
			continue
		}
		if !errors.Is(err, ErrLeaseHeld) {
			err = fmt.Errorf("lease not renewed for %s (last error: %v); another run may take it over", time.Since(lastOK).Round(time.Second), err)
		}
		if errors.Is(err, ErrLeaseHeld) || time.Since(lastOK) > l.ttl*2/3 {
			l.mu.Lock()
			l.lost = err
			l.mu.Unlock()
			if onLost != nil {
				onLost(err)
			}
			return
		}
	}
}

func (l *Lease) renewOnce(ctx context.Context) error {
	body, err := l.body(time.Now().Add(l.ttl), false)
	if err != nil {
		return err
	}
	for _, h := range l.held {
		if ok, err := storage.Exists(ctx, leasePath(h.loc, h.gen+1)); err != nil {
			return err
		} else if ok {
			cur, _ := readLease(ctx, leasePath(h.loc, h.gen+1))
			who := "another run"
			if cur != nil {
				who = cur.Holder.String()
			}
			return fmt.Errorf("lease on %s %s lost: taken over by %s: %w", h.field, h.loc, who, ErrLeaseHeld)
		}
		if err := storage.Put(ctx, leasePath(h.loc, h.gen), body); err != nil {
			return err
		}
	}
	return nil
}

// Lost returns why the lease was lost, or nil.
func (l *Lease) Lost() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Confirm stops renewing and checks the lease held the whole time: no
// generation newer than ours appeared, and the last renewal is recent
// enough that nobody could have taken it over since. A run calls it before
// it reports its result.
func (l *Lease) Confirm(ctx context.Context) error {
	if l.cancel != nil {
		l.cancel()
		<-l.done
		l.cancel = nil
	}
	if err := l.Lost(); err != nil {
		return err
	}
	l.mu.Lock()
	since := time.Since(l.renewed)
	l.mu.Unlock()
	for _, h := range l.held {
		ok, err := storage.Exists(ctx, leasePath(h.loc, h.gen+1))
		if err != nil {
			return fmt.Errorf("lease on %s %s: cannot confirm it was held throughout: %w", h.field, h.loc, err)
		}
		if ok {
			return fmt.Errorf("lease on %s %s was taken over by another run: %w", h.field, h.loc, ErrLeaseHeld)
		}
	}
	if since > l.ttl {
		err := fmt.Errorf("lease not renewed for %s, longer than its %s TTL (was this process paused?): another run could have written the same target", since.Round(time.Second), l.ttl)
		l.mu.Lock()
		l.lost = err
		l.mu.Unlock()
		return err
	}
	return nil
}

// Release stops renewing and marks every held lease released, so the next
// run need not wait for it to expire.
func (l *Lease) Release(ctx context.Context) {
	if l == nil {
		return
	}
	if l.cancel != nil {
		l.cancel()
		<-l.done
	}
	l.release(ctx)
}

func (l *Lease) release(ctx context.Context) {
	if l.Lost() != nil {
		return
	}
	body, err := l.body(time.Now(), true)
	if err != nil {
		return
	}
	for _, h := range l.held {
		// Only our own generation, and only while nobody took it over.
		if ok, err := storage.Exists(ctx, leasePath(h.loc, h.gen+1)); err != nil || ok {
			continue
		}
		_ = storage.Put(ctx, leasePath(h.loc, h.gen), body)
	}
}

// Describe lists what the lease covers, for the run's first lines.
func (l *Lease) Describe() string {
	var parts []string
	for _, h := range l.held {
		parts = append(parts, h.field)
	}
	return strings.Join(parts, ", ")
}

// bootID identifies this kernel boot ("" where unknown).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// pidNamespace identifies this process's PID namespace ("" where unknown).
func pidNamespace() string {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return ns
}
