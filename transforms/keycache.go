package transforms

import (
	"container/list"
	"context"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"rekey/providers/keys"
)

// openKEKs holds the KEKs opened in this process, shared by every DoFn
// instance: a KEK is a logged-in token, not something to open per bundle.
var (
	keksMu sync.Mutex
	keks   = map[string]keys.KEK{}
)

// openKEK opens a DoFn's KEK with the spec's HSM rate limit.
func (s *Spec) openKEK(ctx context.Context, uri, wrap string) (keys.KEK, error) {
	k, err := OpenKEK(ctx, uri, wrap, s.workers())
	if err != nil {
		return nil, err
	}
	return withRate(k, s.HSMRate), nil
}

// openPair opens the source and target KEKs of a migrating DoFn.
func (s *Spec) openPair(ctx context.Context) (src, dst keys.KEK, err error) {
	if src, err = s.openKEK(ctx, s.SourceKEK, s.SourceWrap); err != nil {
		return nil, nil, fmt.Errorf("source KEK: %w", err)
	}
	if dst, err = s.openKEK(ctx, s.TargetKEK, s.TargetWrap); err != nil {
		return nil, nil, fmt.Errorf("target KEK: %w", err)
	}
	if s.TargetWrap == "" {
		// The key type's default: name it, so output metadata and ledgers
		// say which wrap was used.
		s.TargetWrap = dst.Mechanism()
	}
	return src, dst, nil
}

// OpenKEK opens (once per process) the KEK at uri using wrap.
func OpenKEK(ctx context.Context, uri, wrap string, sessions int) (keys.KEK, error) {
	keksMu.Lock()
	defer keksMu.Unlock()
	id := uri + "\x00" + wrap
	if k := keks[id]; k != nil {
		return k, nil
	}
	k, err := keys.Open(ctx, uri, keys.Options{Wrap: wrap, Sessions: sessions})
	if err != nil {
		return nil, err
	}
	keks[id] = k
	return k, nil
}

// cachedKey is an unwrapped DEK and its AES-GCM instance.
type cachedKey struct {
	dek  *keys.DEK
	aead cipher.AEAD
}

type cacheEntry struct {
	key   string
	ready chan struct{}
	val   *cachedKey
	err   error
	elem  *list.Element
}

// keyCache is a bounded LRU of unwrapped DEKs, with one unwrap in flight per
// key however many goroutines ask (so HSM work scales with DEKs, not
// records). Evicted keys are zeroed.
type keyCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*cacheEntry
	lru     *list.List
	unwraps int64
}

func newKeyCache(max int) *keyCache {
	if max <= 0 {
		max = 4096
	}
	return &keyCache{max: max, entries: map[string]*cacheEntry{}, lru: list.New()}
}

var (
	sharedCacheOnce sync.Once
	sharedCache     *keyCache
)

// processCache is the DEK cache of this worker process.
func processCache(size int) *keyCache {
	sharedCacheOnce.Do(func() { sharedCache = newKeyCache(size) })
	return sharedCache
}

func cacheKey(kekURI, dekID, mech string, wrapped []byte) string {
	h := sha256.New()
	for _, s := range []string{kekURI, dekID, mech} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(wrapped)
	return string(h.Sum(nil))
}

// get returns the unwrapped key, calling load at most once per key while it
// stays cached. Errors are not cached, except permanent ones for the life of
// the entry's waiters.
func (c *keyCache) get(key string, load func() (*keys.DEK, error)) (*cachedKey, error) {
	c.mu.Lock()
	if e := c.entries[key]; e != nil {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
		}
		c.mu.Unlock()
		<-e.ready
		return e.val, e.err
	}
	e := &cacheEntry{key: key, ready: make(chan struct{})}
	c.entries[key] = e
	c.mu.Unlock()

	dek, err := func() (d *keys.DEK, err error) {
		defer recoverTo(&err) // a panicking load must not leave waiters hanging
		return load()
	}()
	var val *cachedKey
	if err == nil {
		aead, aerr := dek.AEAD()
		if aerr != nil {
			dek.Zero()
			err = aerr
		} else {
			val = &cachedKey{dek: dek, aead: aead}
		}
	}
	c.mu.Lock()
	e.val, e.err = val, err
	if err != nil {
		delete(c.entries, key)
	} else {
		c.unwraps++
		e.elem = c.lru.PushFront(e)
		for c.lru.Len() > c.max {
			old := c.lru.Remove(c.lru.Back()).(*cacheEntry)
			delete(c.entries, old.key)
			old.val.dek.Zero()
		}
	}
	c.mu.Unlock()
	close(e.ready)
	return val, err
}

// put inserts a key this process created (a fresh DEK), so it is not
// unwrapped again. The cache takes ownership of dek.
func (c *keyCache) put(key string, dek *keys.DEK) {
	_, _ = c.get(key, func() (*keys.DEK, error) { return dek, nil })
}

// Unwraps is the number of unwraps this process's cache performed.
func Unwraps() int64 {
	c := processCache(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unwraps
}

// withRetry runs op, retrying errors marked retryable with exponential
// backoff and full jitter. Permanent errors return at once.
func withRetry(ctx context.Context, op func() error) error {
	const attempts = 5
	backoff := 50 * time.Millisecond
	var err error
	for i := 0; i < attempts; i++ {
		err = op()
		if err == nil || !keys.IsRetryable(err) {
			return err
		}
		sleep := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(sleep):
		}
		backoff *= 2
	}
	return fmt.Errorf("gave up after %d attempts: %w", attempts, err)
}
