package hsmio

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
)

// token is one logged-in token, shared by every KEK on it in this process.
//
// Two kinds of sessions work on it. crypto11 (RSA-OAEP decrypt, HSM
// random, key lookup) has its own pool, and a persistent session that
// holds the login; every AES key operation (AES-GCM, C_WrapKey,
// C_UnwrapKey) and attribute reads use the raw pool below, on the same
// initialized module.
//
// crypto11 v1.5.0 puts every session back into its pool, dead or alive, so
// a session the HSM dropped would fail every later operation that draws
// it. The crypto11 objects therefore live in a generation (a Context, and
// each KEK's keys found in it); on a lost session the generation is
// replaced: a new Context is configured (it logs in again if the token
// logged the application out), the keys are found again on first use, and
// only then is the old Context closed, so the module's reference count
// never reaches zero and crypto11 never finalizes the library under the
// raw context.
type token struct {
	p11  *pkcs11.Ctx
	gcm  *gcmFuncs // AES-GCM in one C call (gcmcall.go); nil: through p11
	slot uint
	name string // label or "serial N", for messages
	pin  Secret
	cfg  crypto11.Config // each generation configures a copy

	genMu sync.Mutex // serializes replacing the generation
	gen   atomic.Pointer[generation]

	// limit is the token's session limit (C_GetTokenInfo), 0 if it reports
	// none; others the sessions open elsewhere when it was first opened.
	limit, others int
	wanted        atomic.Int64 // the most concurrent operations a caller asked for

	raw pool

	// The session copies of AES keys (sessioncopy.go) live on the holder;
	// noHolder says why the token has none (its session limit).
	holdMu   sync.Mutex
	hold     *holder
	noHolder string
	copiesMu sync.Mutex
	copies   map[string]*keyCopy // by the key's label and id

	mechOnce sync.Once
	mechs    map[uint]bool // nil: the token would not list them
}

// generation is one crypto11 Context of a token; work is the size of its
// session pool (its persistent session comes on top).
type generation struct {
	c11  *crypto11.Context
	work int
}

var (
	tokensMu sync.Mutex
	tokens   = map[string]*token{}
)

// poolWait is how long an operation waits for a session before it fails
// (retryably).
var poolWait = 60 * time.Second

// defaultSessions is the pool size when the caller does not say.
func defaultSessions() int { return 2*runtime.NumCPU() + 2 }

// openToken returns the process-wide token for u, logging in on first use.
// sessions is the number of concurrent operations the caller wants (0: a
// default); a token opened before grows its pools to it, within the
// token's session limit.
func openToken(u URI, sessions int) (*token, error) {
	pin, err := ResolvePIN(u.PinSource)
	if err != nil {
		return nil, fmt.Errorf("open token %q: %w", u.Token, err)
	}
	if sessions <= 0 {
		sessions = defaultSessions()
	}
	h := sha256.Sum256([]byte(pin.Value()))
	key := u.ModulePath + "\x00" + u.Token + "\x00" + u.Serial + "\x00" + string(h[:])
	tokensMu.Lock()
	defer tokensMu.Unlock()
	if t := tokens[key]; t != nil {
		if err := t.reserve(sessions); err != nil {
			return nil, err
		}
		return t, nil
	}
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("%w %s: %v (install the HSM's PKCS#11 library, or set module-path in the key URI or REKEY_PKCS11_MODULE)", keys.ErrModule, u.ModulePath, err)
	}
	name := u.Token
	if u.Serial != "" {
		name = "serial " + u.Serial
	}
	t := &token{name: name, pin: pin, cfg: crypto11.Config{
		Path:            u.ModulePath,
		TokenLabel:      u.Token,
		TokenSerial:     u.Serial,
		Pin:             pin.Value(),
		PoolWaitTimeout: poolWait,
	}}
	if u.Serial != "" {
		t.cfg.TokenLabel = ""
	}
	t.wanted.Store(int64(sessions))
	// The raw context is loaded before crypto11 configures, so that the
	// module stays loaded (its state with it) if crypto11 finalizes and
	// unloads it after a failed login; it is initialized after crypto11,
	// which insists on initializing the module itself.
	p11, err := rawModule(u.ModulePath)
	if err != nil {
		return nil, err
	}
	// crypto11 caps its pool to the token's read-write session limit, and
	// opens pool sessions only when they are used: this first generation
	// costs one session (its login), whatever its size.
	g, err := t.configure(sessions)
	if err != nil {
		return nil, err
	}
	t.gen.Store(g)
	if err := p11.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return nil, fmt.Errorf("%w %s: %v", keys.ErrModule, u.ModulePath, err)
	}
	t.p11 = p11
	t.gcm = gcmFuncsOf(u.ModulePath)
	if t.slot, err = findSlot(p11, u); err != nil {
		_ = g.c11.Close()
		return nil, err
	}
	ti, err := p11.GetTokenInfo(t.slot)
	if err != nil {
		_ = g.c11.Close()
		return nil, classify(err, fmt.Sprintf("read the session limit of token %q", name))
	}
	var open int
	t.limit, open = sessionLimit(ti)
	rawSize := sessions
	if t.limit > 0 {
		t.others = max(open-1, 0) // crypto11's login session is ours
		work := t.limit - t.others - 1
		if work < 2 {
			_ = g.c11.Close()
			return nil, keys.Retryable(fmt.Errorf("open token %q: %w: the token allows %d sessions and %d are open elsewhere; rekey needs 3 (one stays logged in, one for crypto11's operations (RSA keys, random), one for AES key operations): close other applications' sessions, or raise the token's session limit",
				name, pkcs11.Error(pkcs11.CKR_SESSION_COUNT), t.limit, t.others))
		}
		// The session holding the session copies of the keys is one
		// more, if two are left for the operations; without it the keys'
		// token objects are used.
		if work >= 3 {
			work--
		} else {
			t.noHolder = fmt.Sprintf("the token's session limit (%d sessions, %d open elsewhere) leaves no room for the session that would hold a session copy", t.limit, t.others)
		}
		// The token's room is split once: a third (at least one) for
		// crypto11 (RSA keys, the token's random generator), the rest for
		// the raw calls (every AES key operation). Both open sessions
		// lazily.
		c11 := max(1, work/3)
		rawSize = work - c11
		if c11 != g.work {
			// Nothing runs on g yet: it is closed at once (after its
			// successor is configured, so the module stays initialized).
			g2, err := t.configure(c11)
			_ = g.c11.Close()
			if err != nil {
				return nil, err
			}
			t.gen.Store(g2)
		}
	}
	t.raw.init(t, rawSize)
	tokens[key] = t
	return t, nil
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*pkcs11.Ctx{}
)

// rawModule returns the process's raw context of a module, loaded once. It
// shares the initialized library with crypto11: never Finalize it.
func rawModule(path string) (*pkcs11.Ctx, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if p := modules[path]; p != nil {
		return p, nil
	}
	p := pkcs11.New(path)
	if p == nil {
		return nil, fmt.Errorf("%w %s: dlopen failed", keys.ErrModule, path)
	}
	modules[path] = p
	return p, nil
}

// configure makes a crypto11 Context with a pool of work sessions. A token
// can be absent for a moment (a network HSM failing over, or SoftHSM
// rewriting a token file, as it does on every login, while this process
// lists its tokens): it is looked for again before this gives up.
func (t *token) configure(work int) (*generation, error) {
	var c11 *crypto11.Context
	var err error
	for attempt := 0; ; attempt++ {
		cfg := t.cfg // Configure writes defaults into its argument
		cfg.MaxSessions = work + 1
		c11, err = loggingIn(func() (*crypto11.Context, error) { return crypto11.Configure(&cfg) })
		if err == nil || !strings.Contains(err.Error(), "could not find PKCS#11 token") || attempt == 4 {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 250 * time.Millisecond)
	}
	if err != nil {
		if strings.Contains(err.Error(), "could not find PKCS#11 token") {
			return nil, fmt.Errorf("open token %q in %s: %w (list tokens with: softhsm2-util --show-slots, or your HSM's tool)", t.name, t.cfg.Path, keys.ErrTokenNotFound)
		}
		if strings.Contains(err.Error(), "failed to create module context") {
			return nil, fmt.Errorf("%w %s: %v", keys.ErrModule, t.cfg.Path, err)
		}
		return nil, classify(err, fmt.Sprintf("log in to token %q", t.name))
	}
	return &generation{c11: c11, work: work}, nil
}

// replace makes a new generation in place of old, with a pool of work
// sessions, unless another goroutine has replaced old already (force: make
// it even if it is no larger than the current one). The old Context is closed
// once the new one is in place; its Close waits for the operations still
// running on it, which then fail as on a closed Context and run again on
// the new generation.
func (t *token) replace(old *generation, work int, force bool) error {
	t.genMu.Lock()
	defer t.genMu.Unlock()
	cur := t.gen.Load()
	if cur != old && work <= cur.work {
		return nil
	}
	if !force && work < cur.work {
		work = cur.work
	}
	g, err := t.configure(work)
	if err != nil {
		return err
	}
	t.gen.Store(g)
	go func() { _ = cur.c11.Close() }()
	return nil
}

// reserve grows the token's pools to serve n concurrent operations, within
// the token's session limit (a token with a limit got its whole share when
// it was opened). Pools never shrink.
func (t *token) reserve(n int) error {
	for {
		w := t.wanted.Load()
		if int64(n) <= w || t.wanted.CompareAndSwap(w, int64(n)) {
			break
		}
	}
	if t.limit > 0 {
		return nil
	}
	t.raw.grow(n)
	if g := t.gen.Load(); n > g.work {
		return t.replace(g, n, false)
	}
	return nil
}

// usable is how many operations of one kind can run at once: what was
// asked, within the pool they run on.
func (t *token) usable(raw bool) int {
	wanted := int(t.wanted.Load())
	if t.limit == 0 {
		return wanted
	}
	have := t.gen.Load().work
	if raw {
		have, _ = t.raw.sizes()
	}
	return min(wanted, have)
}

// sessionLimit reads the most sessions a token allows (the smaller of its
// read-write and overall limits; rekey opens read-write sessions) and how
// many are open. 0 means no limit (CK_EFFECTIVELY_INFINITE) or none
// reported (CK_UNAVAILABLE_INFORMATION).
func sessionLimit(ti pkcs11.TokenInfo) (limit, open int) {
	known := func(v uint) bool {
		return v != pkcs11.CK_UNAVAILABLE_INFORMATION && v != pkcs11.CK_EFFECTIVELY_INFINITE
	}
	for _, v := range []uint{ti.MaxSessionCount, ti.MaxRwSessionCount} {
		if known(v) && v < 1<<20 && (limit == 0 || int(v) < limit) {
			limit = int(v)
		}
	}
	for _, v := range []uint{ti.SessionCount, ti.RwSessionCount} {
		if v != pkcs11.CK_UNAVAILABLE_INFORMATION && v < 1<<20 && int(v) > open {
			open = int(v)
		}
	}
	return limit, open
}

func findSlot(p11 *pkcs11.Ctx, u URI) (uint, error) {
	slots, err := p11.GetSlotList(true)
	if err != nil {
		return 0, classify(err, "list PKCS#11 slots")
	}
	var unread error // a slot whose token could not be read may hold it
	for _, s := range slots {
		ti, err := p11.GetTokenInfo(s)
		if err != nil {
			unread = err
			continue
		}
		if (u.Serial != "" && strings.TrimSpace(ti.SerialNumber) == u.Serial) || (u.Serial == "" && strings.TrimSpace(ti.Label) == u.Token) {
			return s, nil
		}
	}
	if unread != nil {
		return 0, classify(unread, fmt.Sprintf("look for token %q", u.Token))
	}
	return 0, fmt.Errorf("token %q: %w", u.Token, keys.ErrTokenNotFound)
}

// errCode finds the PKCS#11 code of an error, also when crypto11 flattened
// it into text.
func errCode(err error) (pkcs11.Error, bool) {
	var p pkcs11.Error
	if errors.As(err, &p) {
		return p, true
	}
	if err == nil {
		return 0, false
	}
	return codeFromText(err.Error())
}

// sessionLost reports the errors that say the token lost the session (or
// the whole token, for a moment, or the login with it).
func sessionLost(err error) bool {
	p, ok := errCode(err)
	if !ok {
		return false
	}
	switch p {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_USER_NOT_LOGGED_IN:
		return true
	}
	return false
}

// goneForAMoment reports a device or token that is away (a fail-over):
// the operation runs again after a pause, not at once.
func goneForAMoment(err error) bool {
	p, ok := errCode(err)
	return ok && (p == pkcs11.CKR_DEVICE_REMOVED || p == pkcs11.CKR_TOKEN_NOT_PRESENT)
}

// operationActive reports a session an earlier failure left in the middle
// of an operation (a search whose C_FindObjectsFinal failed, say): crypto11
// would hand it out again and again.
func operationActive(err error) bool {
	p, ok := errCode(err)
	return ok && p == pkcs11.CKR_OPERATION_ACTIVE
}

func sessionCount(err error) bool {
	p, ok := errCode(err)
	return ok && p == pkcs11.CKR_SESSION_COUNT
}

// closedContext reports crypto11's answers on a Context that was closed
// (a replaced generation).
func closedContext(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "context is closed") || strings.Contains(s, "cannot used closed Context")
}

// maxReplace bounds how often one operation gets a fresh session (or
// crypto11 generation) for a lost one before its error goes to the caller
// (still retryable: keys.WithRetry tries again after a pause).
const maxReplace = 3

// pause is the wait before an operation runs again after its token was
// away for a moment.
func pause(ctx context.Context, try int) error {
	select {
	case <-time.After(time.Duration(try) * 50 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// withC11 runs f on the token's current crypto11 generation. When the
// token lost the session f ran on (or an earlier failure left it in the
// middle of an operation), the generation is replaced and f runs
// again, up to maxReplace times; f failing because another goroutine
// replaced the generation under it runs again too. A token with no
// session free (CKR_SESSION_COUNT: other applications hold them) is waited
// for, up to poolWait. A panic in f (crypto11 may panic on HSM errors)
// becomes its error.
func (t *token) withC11(ctx context.Context, f func(g *generation) error) error {
	var deadline time.Time
	backoff := 20 * time.Millisecond
	for replaced, stale := 0, 0; ; {
		g := t.gen.Load()
		err := recovered(func() error { return f(g) })
		switch {
		case err == nil:
			return nil
		case t.gen.Load() != g && (closedContext(err) || sessionLost(err)) && stale < 2*maxReplace:
			stale++ // replaced by another goroutine meanwhile
		case (sessionLost(err) || operationActive(err)) && replaced < maxReplace:
			replaced++
			if goneForAMoment(err) {
				if perr := pause(ctx, replaced); perr != nil {
					return err
				}
			}
			if rerr := t.replace(g, g.work, true); rerr != nil {
				return fmt.Errorf("%w (replacing the lost session: %v)", err, rerr)
			}
			t.rearmCopies()
		case sessionCount(err):
			if deadline.IsZero() {
				deadline = time.Now().Add(poolWait)
			}
			if time.Now().After(deadline) {
				return err
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return err
			}
			backoff = min(2*backoff, time.Second)
		default:
			return err
		}
	}
}

// recovered runs f, turning a panic into an error.
func recovered(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("PKCS#11 call panicked: %v", r)
			}
		}
	}()
	return f()
}

// openSession opens a raw session and makes sure it is logged in: after
// the token lost every session of this process (a fail-over), its login is
// gone too, and a new session would not see the keys. One
// C_GetSessionInfo per session opened, none per operation.
func (t *token) openSession() (pkcs11.SessionHandle, error) {
	sh, err := t.p11.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, err
	}
	info, err := t.p11.GetSessionInfo(sh)
	if err != nil {
		_ = t.p11.CloseSession(sh)
		return 0, err
	}
	if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		// Login state is the application's: this logs in every session of
		// the process, crypto11's next generation included.
		if _, err := loggingIn(func() (struct{}, error) { return struct{}{}, t.p11.Login(sh, pkcs11.CKU_USER, t.pin.Value()) }); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			_ = t.p11.CloseSession(sh)
			return 0, err
		}
	}
	return sh, nil
}

// loss says what an error means for the raw session it happened on:
// replace (close it), flush (close the idle ones too: a token that lost one
// session has often lost them all, in a fail-over) and again (run the
// operation once more on a fresh session).
func loss(err error) (replace, flush, again bool) {
	p, ok := errCode(err)
	if !ok {
		return false, false, false
	}
	switch p {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return true, true, true
	case pkcs11.CKR_OPERATION_ACTIVE: // an earlier failure left an operation open
		return true, false, true
	case pkcs11.CKR_DEVICE_ERROR:
		return true, false, false
	}
	return false, false, false
}

// withSession runs f on a logged-in raw session. When the token lost the
// session, the session is closed (with the pool's idle ones) and f runs
// again on a fresh session, up to maxReplace times.
func (t *token) withSession(ctx context.Context, f func(pkcs11.SessionHandle) error) error {
	for replaced := 0; ; replaced++ {
		sh, err := t.raw.get(ctx)
		if err != nil {
			return err
		}
		// A panic in the PKCS#11 binding becomes an error, so the session
		// goes back to the pool (the pool would drain otherwise).
		err = recovered(func() error { return f(sh) })
		replace, flush, again := loss(err)
		t.raw.put(sh, replace, flush)
		if flush {
			t.rearmCopies() // a fail-over: copies that failed for now are tried again
		}
		if !again || replaced == maxReplace {
			return err
		}
		if goneForAMoment(err) {
			if perr := pause(ctx, replaced+1); perr != nil {
				return err
			}
		}
	}
}

// pool is a token's raw sessions, opened lazily up to size.
type pool struct {
	t       *token
	mu      sync.Mutex
	idle    []pkcs11.SessionHandle
	open    int           // sessions open: idle and in use
	size    int           // most sessions to hold open
	changed chan struct{} // closed (and replaced) when a session returns or the size changes, if watched
	watched bool          // a caller of get took changed to wait on
}

func (p *pool) init(t *token, size int) {
	p.t, p.size, p.changed = t, size, make(chan struct{})
}

// grow raises the pool's size to n.
func (p *pool) grow(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n > p.size {
		p.size = n
		p.signal()
	}
}

// sizes reports the pool's size and how many sessions are open.
func (p *pool) sizes() (size, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size, p.open
}

// signal wakes the callers of get waiting on changed. With none (the
// usual put), it costs nothing.
func (p *pool) signal() {
	if !p.watched {
		return
	}
	close(p.changed)
	p.changed, p.watched = make(chan struct{}), false
}

// watch returns the channel signal closes next (p.mu held).
func (p *pool) watch() chan struct{} {
	p.watched = true
	return p.changed
}

// get returns an idle session, or opens one if the pool has room, or waits
// for one to come back. A token that refuses a new session
// (CKR_SESSION_COUNT: other applications hold the rest) is asked again
// after a pause or when one of ours comes back, until poolWait has passed.
func (p *pool) get(ctx context.Context) (pkcs11.SessionHandle, error) {
	var deadline time.Time // set when it first has to wait
	pause := 20 * time.Millisecond
	var full error // the token's last CKR_SESSION_COUNT
	for {
		p.mu.Lock()
		if n := len(p.idle); n > 0 {
			sh := p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.mu.Unlock()
			return sh, nil
		}
		wait := p.watch()
		if p.open < p.size {
			p.open++
			p.mu.Unlock()
			sh, err := p.t.openSession()
			if err == nil {
				return sh, nil
			}
			p.mu.Lock()
			p.open--
			p.signal()
			wait = p.watch()
			p.mu.Unlock()
			if !sessionCount(err) {
				return 0, classify(err, fmt.Sprintf("open a session on token %q", p.t.name))
			}
			full = err
		} else {
			p.mu.Unlock()
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(poolWait)
		}
		left := time.Until(deadline)
		if left <= 0 {
			if full != nil {
				return 0, keys.Retryable(fmt.Errorf("open a session on token %q: %w: the token has no free session for %v (other applications hold them, or its limit is lower than it reports): lower --workers, or raise the token's session limit", p.t.name, full, poolWait))
			}
			return 0, keys.Retryable(fmt.Errorf("token %q: HSM session pool timeout: no session free for %v (the HSM is busy; lower --workers or --hsm-rate)", p.t.name, poolWait))
		}
		var timer <-chan time.Time
		if full != nil {
			timer = time.After(min(pause, left))
			pause = min(2*pause, time.Second)
		} else {
			timer = time.After(left)
		}
		select {
		case <-wait:
		case <-timer:
		case <-ctx.Done():
			return 0, fmt.Errorf("token %q: waiting for an HSM session: %w", p.t.name, ctx.Err())
		}
	}
}

// put returns a session; a bad one is closed, and with flush the idle ones
// too.
func (p *pool) put(sh pkcs11.SessionHandle, bad, flush bool) {
	var closing []pkcs11.SessionHandle
	p.mu.Lock()
	if bad {
		closing = append(closing, sh)
		if flush {
			closing = append(closing, p.idle...)
			p.idle = p.idle[:0]
		}
		p.open -= len(closing)
	} else {
		p.idle = append(p.idle, sh)
	}
	p.signal()
	p.mu.Unlock()
	for _, s := range closing {
		_ = p.t.p11.CloseSession(s)
	}
}

// findObject returns the handle of the token object with the given class
// and label/id (never one of the process's session copies, which share
// the key's id).
func (t *token) findObject(sh pkcs11.SessionHandle, class uint, label string, id []byte) (pkcs11.ObjectHandle, bool, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	if label != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	if err := t.p11.FindObjectsInit(sh, tmpl); err != nil {
		return 0, false, err
	}
	objs, _, err := t.p11.FindObjects(sh, 2)
	if ferr := t.p11.FindObjectsFinal(sh); err == nil && ferr != nil {
		// A search left open blocks the session's next one.
		err = ferr
	}
	if err != nil {
		return 0, false, err
	}
	if len(objs) == 0 {
		return 0, false, nil
	}
	if len(objs) > 1 {
		return 0, false, fmt.Errorf("%d objects match label %q: give id= in the URI to pick one", len(objs), label)
	}
	return objs[0], true, nil
}

// boolAttrs reads CKA_* boolean attributes of an object.
func (t *token) boolAttrs(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, types ...uint) (map[uint]bool, error) {
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		tmpl[i] = pkcs11.NewAttribute(ty, nil)
	}
	attrs, err := t.p11.GetAttributeValue(sh, h, tmpl)
	if err != nil {
		return nil, err
	}
	m := map[uint]bool{}
	for _, a := range attrs {
		m[a.Type] = len(a.Value) > 0 && a.Value[0] != 0
	}
	return m, nil
}

// mechanisms lists the token's mechanisms once (C_GetMechanismList); nil
// if the token would not say (then nothing is refused for want of a
// mechanism).
func (t *token) mechanisms() map[uint]bool {
	t.mechOnce.Do(func() {
		var list []*pkcs11.Mechanism
		err := retry(context.Background(), nil, func() error {
			var err error
			list, err = t.p11.GetMechanismList(t.slot)
			return classify(err, "list mechanisms")
		})
		if err != nil || len(list) == 0 {
			return
		}
		t.mechs = map[uint]bool{}
		for _, x := range list {
			t.mechs[x.Mechanism] = true
		}
	})
	return t.mechs
}
