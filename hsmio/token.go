package hsmio

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
)

// token is one logged-in token, shared by every KEK on it in this process.
type token struct {
	c11      *crypto11.Context
	p11      *pkcs11.Ctx
	slot     uint
	label    string
	sessions chan pkcs11.SessionHandle // raw sessions for C_WrapKey/C_UnwrapKey
	maxSess  int
}

var (
	tokensMu sync.Mutex
	tokens   = map[string]*token{}
)

// openToken returns the process-wide token for u, logging in on first use.
func openToken(u URI, sessions int) (*token, error) {
	pin, err := ResolvePIN(u.PinSource)
	if err != nil {
		return nil, fmt.Errorf("open token %q: %w", u.Token, err)
	}
	h := sha256.Sum256([]byte(pin.Value()))
	key := u.ModulePath + "\x00" + u.Token + "\x00" + u.Serial + "\x00" + string(h[:])
	tokensMu.Lock()
	defer tokensMu.Unlock()
	if t := tokens[key]; t != nil {
		return t, nil
	}
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("%w %s: %v (install the HSM's PKCS#11 library, or set module-path in the key URI or REKEY_PKCS11_MODULE)", keys.ErrModule, u.ModulePath, err)
	}
	if sessions <= 0 {
		sessions = 2*runtime.NumCPU() + 2
	}
	if sessions < 2 {
		sessions = 2
	}
	cfg := &crypto11.Config{
		Path:            u.ModulePath,
		TokenLabel:      u.Token,
		TokenSerial:     u.Serial,
		Pin:             pin.Value(),
		MaxSessions:     sessions + 1,
		PoolWaitTimeout: 60 * time.Second,
	}
	if u.Serial != "" {
		cfg.TokenLabel = ""
	}
	c11, err := crypto11.Configure(cfg)
	for attempt := 1; err != nil && strings.Contains(err.Error(), "could not find PKCS#11 token") && attempt <= 4; attempt++ {
		// A token can be absent for a moment: a network HSM failing over,
		// or SoftHSM rewriting a token file (it does on every login) while
		// this process lists its tokens. Look again before giving up.
		time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
		c11, err = crypto11.Configure(cfg)
	}
	if err != nil {
		name := u.Token
		if name == "" {
			name = "serial " + u.Serial
		}
		if strings.Contains(err.Error(), "could not find PKCS#11 token") {
			return nil, fmt.Errorf("open token %q in %s: %w (list tokens with: softhsm2-util --show-slots, or your HSM's tool)", name, u.ModulePath, keys.ErrTokenNotFound)
		}
		if strings.Contains(err.Error(), "failed to create module context") {
			return nil, fmt.Errorf("%w %s: %v", keys.ErrModule, u.ModulePath, err)
		}
		return nil, classify(err, fmt.Sprintf("log in to token %q", name))
	}
	// A raw context on the same module path shares the initialized library
	// with crypto11. Never Finalize it.
	p11 := pkcs11.New(u.ModulePath)
	if p11 == nil {
		return nil, fmt.Errorf("%w %s: dlopen failed", keys.ErrModule, u.ModulePath)
	}
	if err := p11.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return nil, fmt.Errorf("%w %s: %v", keys.ErrModule, u.ModulePath, err)
	}
	slot, err := findSlot(p11, u)
	if err != nil {
		return nil, err
	}
	t := &token{c11: c11, p11: p11, slot: slot, label: u.Token, sessions: make(chan pkcs11.SessionHandle, sessions), maxSess: sessions}
	for i := 0; i < sessions; i++ {
		t.sessions <- 0 // opened lazily
	}
	tokens[key] = t
	return t, nil
}

func findSlot(p11 *pkcs11.Ctx, u URI) (uint, error) {
	slots, err := p11.GetSlotList(true)
	if err != nil {
		return 0, classify(err, "list PKCS#11 slots")
	}
	for _, s := range slots {
		ti, err := p11.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if (u.Serial != "" && strings.TrimSpace(ti.SerialNumber) == u.Serial) || (u.Serial == "" && strings.TrimSpace(ti.Label) == u.Token) {
			return s, nil
		}
	}
	return 0, fmt.Errorf("token %q: %w", u.Token, keys.ErrTokenNotFound)
}

// withSession runs f on a raw logged-in session, reopening it once if the
// HSM dropped it.
func (t *token) withSession(f func(pkcs11.SessionHandle) error) (err error) {
	sh := <-t.sessions
	if sh == 0 {
		sh, err = t.p11.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.sessions <- 0
			return classify(err, "open HSM session")
		}
	}
	// The session goes back to the pool however f ends (a panic in the
	// PKCS#11 binding included), or the pool drains.
	defer func() {
		var p pkcs11.Error
		if errors.As(err, &p) && (p == pkcs11.CKR_SESSION_HANDLE_INVALID || p == pkcs11.CKR_SESSION_CLOSED || p == pkcs11.CKR_DEVICE_ERROR) {
			_ = t.p11.CloseSession(sh)
			sh = 0
		}
		t.sessions <- sh
	}()
	err = f(sh)
	return err
}

// findObject returns the handle of the object with the given class and
// label/id.
func (t *token) findObject(sh pkcs11.SessionHandle, class uint, label string, id []byte) (pkcs11.ObjectHandle, bool, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
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
	_ = t.p11.FindObjectsFinal(sh)
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
