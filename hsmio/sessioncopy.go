package hsmio

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
)

// Session copies of AES KEKs (issue 14, lever 5).
//
// Some tokens (SoftHSM2 among them) read a token object from their store
// again for every operation with it; a session object stays in memory. So
// an AES KEK is used through a copy of it: C_CopyObject with CKA_TOKEN
// false and a label of its own ("rekey-session-copy-<random hex>"); every
// other attribute is the key's (its CKA_SENSITIVE, CKA_EXTRACTABLE and usage
// flags), and the copy is read back to check that. Session objects are
// visible to every session of the process and live until the session that
// made them closes, so the copies are made on one raw session of the token
// held open for them (the holder, never in a pool): crypto11 finds a copy
// by its label on its own sessions when the key is opened (the check that
// other sessions see it); AES-GCM, C_WrapKey and C_UnwrapKey (aes-kwp) and
// the inside-token rewrap use its handle on the raw pool's sessions. A copy
// vanishes with its holder, when the process exits at the latest: it is
// never stored on the token. One copy serves every KEK of the process that
// names the same key on the same token.
//
// The token object is used instead, for good, when the key says
// CKA_COPYABLE false, when the token refuses the copy (CKR_ACTION_PROHIBITED,
// CKR_ATTRIBUTE_READ_ONLY, any error that is not transient), when the copy
// it made is not a session object with the key's protections, or when
// crypto11's sessions cannot see it; and when the token's session limit
// leaves no room for the holder. A transient failure uses the token object
// until the next replacement of lost sessions (rearmCopies: the next
// operation after it tries the copy again). The preflight says which one a
// key uses.
//
// A lost holder takes its copies with it: an operation on a copy then
// fails with CKR_KEY_HANDLE_INVALID or CKR_OBJECT_HANDLE_INVALID, the copy
// is checked (one C_GetAttributeValue on the holder), and if it or its
// holder is gone, the holder is closed (the module releases it and what is
// left on it), a new one opened, a new copy made, and the operation runs
// again.

// noSessionCopies switches session copies off for keys opened afterwards
// (the benchmarks' baseline).
var noSessionCopies atomic.Bool

// copyLabelPrefix starts the label of every session copy.
const copyLabelPrefix = "rekey-session-copy-"

// holder is the raw session the token's session copies live on.
type holder struct {
	mu     sync.Mutex // one call at a time; close waits for it
	sh     pkcs11.SessionHandle
	closed atomic.Bool // closed: its copies are gone
}

// do runs f on the holder's session; a closed holder answers as a lost
// session.
func (h *holder) do(f func(sh pkcs11.SessionHandle) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed.Load() {
		return pkcs11.Error(pkcs11.CKR_SESSION_CLOSED)
	}
	return recovered(func() error { return f(h.sh) })
}

// holder returns the token's holder session, opening one if it has none.
func (t *token) holder() (*holder, error) {
	t.holdMu.Lock()
	defer t.holdMu.Unlock()
	if h := t.hold; h != nil && !h.closed.Load() {
		return h, nil
	}
	sh, err := t.openSession()
	if err != nil {
		return nil, err
	}
	t.hold = &holder{sh: sh}
	return t.hold, nil
}

// dropHolder closes a holder the token lost: the module forgets it (a
// session the HSM dropped may still be open in the library) and the copies
// on it vanish. The caller must not be inside h.do.
func (t *token) dropHolder(h *holder) {
	t.holdMu.Lock()
	if t.hold == h {
		t.hold = nil
	}
	t.holdMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed.CompareAndSwap(false, true) {
		_ = t.p11.CloseSession(h.sh)
	}
}

// sessionCopy is one session copy of a KEK, on holder.
type sessionCopy struct {
	h      pkcs11.ObjectHandle
	label  string
	holder *holder
}

// live reports whether the copy's holder is still open (not whether the
// token still has the copy: an operation on it says that).
func (c *sessionCopy) live() bool { return c != nil && !c.holder.closed.Load() }

// keyCopy is the session copy of one AES key of a token, shared by every
// KEK of the process that names the key.
type keyCopy struct {
	t         *token
	label     string
	id        []byte
	cur       atomic.Pointer[sessionCopy] // nil: the token object is used
	tried     atomic.Bool                 // a copy was asked for once
	mu        sync.Mutex                  // serializes making copies; guards what follows
	orig      pkcs11.ObjectHandle         // the token object, once found
	off, note string                      // why the token object is used: for good, or for now
}

// copyOf returns the session copy state of the AES key u names.
func (t *token) copyOf(u URI) *keyCopy {
	t.copiesMu.Lock()
	defer t.copiesMu.Unlock()
	key := u.Object + "\x00" + hex.EncodeToString(u.ID)
	kc := t.copies[key]
	if kc == nil {
		if t.copies == nil {
			t.copies = map[string]*keyCopy{}
		}
		kc = &keyCopy{t: t, label: u.Object, id: u.ID}
		if t.noHolder != "" {
			kc.off = t.noHolder
		}
		t.copies[key] = kc
	}
	return kc
}

// reopened is called when a KEK of the key is opened again: a key deleted
// and made again under the same label is a new token object, and gets a
// new copy (the old copy would go on wrapping with the old key).
func (kc *keyCopy) reopened() {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	if kc.orig == 0 {
		return
	}
	same := false
	if cp := kc.cur.Load(); cp.live() {
		_ = cp.holder.do(func(sh pkcs11.SessionHandle) error {
			h, ok, err := kc.t.findObject(sh, pkcs11.CKO_SECRET_KEY, kc.label, kc.id)
			same = err == nil && ok && h == kc.orig
			return err
		})
	}
	if same {
		return
	}
	kc.orig = 0
	if cp := kc.cur.Swap(nil); cp.live() {
		_ = cp.holder.do(func(sh pkcs11.SessionHandle) error { return kc.t.p11.DestroyObject(sh, cp.h) })
	}
	kc.tried.Store(false)
}

// current returns the live copy, making one if there was none yet or the
// last one's holder was lost (nil: the token object is used; after a copy
// that failed for now, until the token's lost sessions are replaced).
func (kc *keyCopy) current() *sessionCopy {
	cp := kc.cur.Load()
	if cp.live() || cp == nil && kc.tried.Load() {
		return cp
	}
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return kc.ensureLocked(false)
}

// lost is called when an operation on copy cp was told its handle is
// invalid: the copy is checked, and replaced if it is gone.
//
// It reports whether the failed operation should run again: cp was gone
// (and is replaced) or another goroutine replaced it already. false: cp is
// alive, so the error was the operation's own.
func (kc *keyCopy) lost(cp *sessionCopy) bool {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	if kc.cur.Load() != cp {
		return true
	}
	if cp.live() && kc.alive(cp) {
		return false
	}
	kc.cur.Store(nil)
	kc.ensureLocked(false)
	return true
}

// rearmCopies is called when the token lost sessions and they were
// replaced (a fail-over): a key whose copy failed for now (not for good)
// tries to make one again at its next operation, instead of using its
// token object until the process exits.
func (t *token) rearmCopies() {
	t.copiesMu.Lock()
	defer t.copiesMu.Unlock()
	for _, kc := range t.copies {
		kc.mu.Lock()
		if kc.off == "" && kc.cur.Load() == nil {
			kc.tried.Store(false)
		}
		kc.mu.Unlock()
	}
}

// renew checks the copy after crypto11's sessions were replaced, and makes
// a new one if it is gone (or if there is none yet and copies are
// possible).
func (kc *keyCopy) renew() *sessionCopy {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return kc.ensureLocked(true)
}

// ensureLocked returns a live copy, making one if there is none; check
// makes sure the token still has the current one. nil: the token object is
// used (off or note says why).
func (kc *keyCopy) ensureLocked(check bool) *sessionCopy {
	kc.tried.Store(true)
	if kc.off != "" {
		return nil
	}
	if cp := kc.cur.Load(); cp.live() && (!check || kc.alive(cp)) {
		return cp
	}
	kc.cur.Store(nil)
	var last error
	for try := 0; try < maxReplace; try++ {
		cp, why, err := kc.make()
		switch {
		case err == nil && why == "":
			kc.cur.Store(cp)
			kc.note = ""
			return cp
		case why != "":
			kc.off = why
			return nil
		}
		last = err
	}
	kc.note = fmt.Sprintf("the session copy failed for now (%v); rekey tries again when it replaces lost sessions", last)
	return nil
}

// alive asks the token whether it still has the copy (one attribute read
// on its holder). A copy the token cannot be asked about is given up, and
// destroyed if its holder still answers.
func (kc *keyCopy) alive(cp *sessionCopy) bool {
	t := kc.t
	err := cp.holder.do(func(sh pkcs11.SessionHandle) error {
		_, err := t.p11.GetAttributeValue(sh, cp.h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil)})
		return err
	})
	switch {
	case err == nil:
		return true
	case sessionLost(err):
		t.dropHolder(cp.holder)
	case !handleInvalid(err):
		_ = cp.holder.do(func(sh pkcs11.SessionHandle) error { return t.p11.DestroyObject(sh, cp.h) })
	}
	return false
}

// make copies the token object on the holder. why, if not empty, is the
// reason the key will use its token object for good; err is a failure
// that may pass.
func (kc *keyCopy) make() (cp *sessionCopy, why string, err error) {
	t := kc.t
	h, err := t.holder()
	if err != nil {
		return nil, "", err
	}
	err = h.do(func(sh pkcs11.SessionHandle) error {
		if kc.orig == 0 {
			o, ok, err := t.findObject(sh, pkcs11.CKO_SECRET_KEY, kc.label, kc.id)
			if err != nil {
				return err
			}
			if !ok {
				return keys.ErrKeyNotFound
			}
			kc.orig = o
		}
		// A token older than PKCS#11 2.40 does not know CKA_COPYABLE:
		// it is asked to copy anyway.
		a, err := t.p11.GetAttributeValue(sh, kc.orig, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, nil)})
		if sessionLost(err) || handleInvalid(err) {
			return err
		}
		if err == nil && len(a) == 1 && len(a[0].Value) > 0 && a[0].Value[0] == 0 {
			why = "CKA_COPYABLE is false, so rekey uses the token object (slower on tokens that re-read token objects, such as SoftHSM2)"
			return nil
		}
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return err
		}
		label := copyLabelPrefix + hex.EncodeToString(rnd[:])
		obj, err := t.p11.CopyObject(sh, kc.orig, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			if !transient(err) {
				why = fmt.Sprintf("the token refused a session copy (C_CopyObject: %v)", err)
				return nil
			}
			return err
		}
		// The copy must be a session object exactly as protected as the
		// key: a token that ignored the template gets no second chance.
		flags := []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE}
		got, err := t.boolAttrs(sh, obj, flags...)
		var want map[uint]bool
		if err == nil {
			want, err = t.boolAttrs(sh, kc.orig, flags...)
		}
		if err != nil {
			_ = t.p11.DestroyObject(sh, obj)
			return err
		}
		if got[pkcs11.CKA_TOKEN] || got[pkcs11.CKA_SENSITIVE] != want[pkcs11.CKA_SENSITIVE] || got[pkcs11.CKA_EXTRACTABLE] != want[pkcs11.CKA_EXTRACTABLE] {
			why = fmt.Sprintf("the token's session copy had CKA_TOKEN %v, CKA_SENSITIVE %v, CKA_EXTRACTABLE %v (the key: %v, %v, %v), so rekey destroyed it and uses the token object",
				got[pkcs11.CKA_TOKEN], got[pkcs11.CKA_SENSITIVE], got[pkcs11.CKA_EXTRACTABLE], true, want[pkcs11.CKA_SENSITIVE], want[pkcs11.CKA_EXTRACTABLE])
			if derr := t.p11.DestroyObject(sh, obj); derr != nil {
				why += fmt.Sprintf(" (destroying it failed: %v; delete the object labelled %q)", derr, label)
			}
			return nil
		}
		cp = &sessionCopy{h: obj, label: label, holder: h}
		return nil
	})
	switch {
	case sessionLost(err):
		t.dropHolder(h)
	case handleInvalid(err):
		kc.orig = 0 // the token object's handle changed (a fail-over)
	}
	if err != nil {
		return nil, "", err
	}
	return cp, why, nil
}

// transient reports an error that may pass: a retry may copy.
func transient(err error) bool {
	return sessionLost(err) || handleInvalid(err) || keys.IsRetryable(classify(err, ""))
}

// disable makes the key use its token object for good: crypto11's sessions
// cannot see its copy (a token that keeps session objects to their session,
// against PKCS#11).
func (kc *keyCopy) disable(cp *sessionCopy, why string) {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	if kc.off == "" {
		kc.off = why
	}
	if kc.cur.CompareAndSwap(cp, nil) {
		_ = cp.holder.do(func(sh pkcs11.SessionHandle) error { return kc.t.p11.DestroyObject(sh, cp.h) })
	}
}

// handleInfo says which object of the key operations use, for the
// preflight.
func (k *KEK) handleInfo() string {
	kc := k.copy
	if kc == nil {
		return "token object: session copies are switched off"
	}
	kc.mu.Lock()
	defer kc.mu.Unlock()
	switch {
	case kc.cur.Load().live():
		return "session copy of the KEK (faster on tokens that re-read token objects): a session object made with C_CopyObject, as sensitive and non-extractable as the key, gone when rekey exits"
	case kc.off != "":
		return "token object: " + kc.off
	case kc.note != "":
		return "token object for now: " + kc.note
	}
	return "token object"
}
