package keys

import (
	"container/list"
	"crypto/sha256"
	"fmt"
	"sync"
)

// Cache is a bounded LRU of unwrapped DEKs with one load in flight per key
// however many goroutines ask, so custodian work scales with DEKs, not
// records. Evicted keys are zeroed.
type Cache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*cacheEntry
	lru     *list.List
	loads   int64
}

type cacheEntry struct {
	key   string
	ready chan struct{}
	val   *DEK
	err   error
	elem  *list.Element
}

// NewCache holds at most max DEKs (0: 4096).
func NewCache(max int) *Cache {
	if max <= 0 {
		max = 4096
	}
	return &Cache{max: max, entries: map[string]*cacheEntry{}, lru: list.New()}
}

// CacheKey names a wrapped key: the KEK reference, its binding, its
// mechanism and the blob.
func CacheKey(kekURI string, b Binding, mech string, wrapped []byte) string {
	h := sha256.New()
	for _, s := range []string{kekURI, b.String(), mech} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	h.Write(wrapped)
	return string(h.Sum(nil))
}

// Get returns the DEK for key, calling load at most once while it stays
// cached. Errors are not cached (waiters of a failed load see its error).
func (c *Cache) Get(key string, load func() (*DEK, error)) (*DEK, error) {
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

	dek, err := func() (d *DEK, err error) {
		defer func() { // a panicking load must not leave waiters hanging
			if r := recover(); r != nil {
				d, err = nil, fmt.Errorf("internal error (panic) while loading a key: %v", r)
			}
		}()
		return load()
	}()
	if err == nil && dek == nil {
		err = fmt.Errorf("%w: custodian returned no key", ErrUnwrapFailed)
	}
	c.mu.Lock()
	e.val, e.err = dek, err
	if err != nil {
		e.val = nil
		delete(c.entries, key)
	} else {
		c.loads++
		e.elem = c.lru.PushFront(e)
		for c.lru.Len() > c.max {
			old := c.lru.Remove(c.lru.Back()).(*cacheEntry)
			delete(c.entries, old.key)
			old.val.Zero()
		}
	}
	c.mu.Unlock()
	close(e.ready)
	return e.val, err
}

// Put inserts a key this process created (a fresh DEK), so it is not
// unwrapped again. The cache takes ownership of dek.
func (c *Cache) Put(key string, dek *DEK) {
	_, _ = c.Get(key, func() (*DEK, error) { return dek, nil })
}

// Loads is the number of loads (unwraps) the cache performed.
func (c *Cache) Loads() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loads
}

// Len is the number of cached keys.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
