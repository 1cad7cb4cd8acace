package faultpkcs11_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"rekey/hsmio/faultpkcs11"
)

// raw loads a copy of the module configured with c and returns its context
// and the slot of "ftok". The copy's counters are its own; the real module
// (and the login state) is shared with the process.
func raw(t *testing.T, c faultpkcs11.Config) (*pkcs11.Ctx, uint) {
	t.Helper()
	p := pkcs11.New(faultpkcs11.ForTest(t, c))
	if p == nil {
		t.Fatal("cannot load the module copy")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == "ftok" {
			return p, s
		}
	}
	t.Fatal("token ftok not found")
	return nil, 0
}

func session(t *testing.T, p *pkcs11.Ctx, slot uint) pkcs11.SessionHandle {
	t.Helper()
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, pin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		t.Fatal(err)
	}
	return sh
}

// A dropped session is gone for good, as on an HSM that lost it: every
// later call on its handle fails, closing it says so too, and a new
// session works.
func TestDropMakesTheSessionUnusable(t *testing.T) {
	for _, code := range []string{faultpkcs11.SessionHandleInvalid, faultpkcs11.SessionClosed, faultpkcs11.DeviceRemoved, faultpkcs11.TokenNotPresent} {
		t.Run(code, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "faults.log")
			p, slot := raw(t, faultpkcs11.Config{Calls: []string{"C_GenerateRandom"}, Mode: faultpkcs11.Drop, Code: code, Rate: 1, After: 1, Max: 1, Log: log})
			sh := session(t, p, slot)
			keep := session(t, p, slot) // another session of the copy: not dropped
			if _, err := p.GenerateRandom(sh, 16); err != nil {
				t.Fatalf("first call (After 1): %v", err)
			}
			if _, err := p.GenerateRandom(sh, 16); !errors.Is(err, pkcs11.Error(codeOf(t, code))) {
				t.Fatalf("dropped call: got %v, want %s", err, code)
			}
			// Max 1: no more faults, but the session stays lost.
			for _, call := range []func() error{
				func() error { _, err := p.GenerateRandom(sh, 16); return err },
				func() error { _, err := p.GetSessionInfo(sh); return err },
				func() error { return p.FindObjectsInit(sh, nil) },
			} {
				if err := call(); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
					t.Fatalf("call on the dropped session: %v, want CKR_SESSION_HANDLE_INVALID", err)
				}
			}
			if _, err := p.GenerateRandom(keep, 16); err != nil {
				t.Fatalf("the other session was dropped too: %v", err)
			}
			if err := p.CloseSession(sh); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
				t.Fatalf("closing the dropped session: %v", err)
			}
			fresh := session(t, p, slot)
			if _, err := p.GenerateRandom(fresh, 16); err != nil {
				t.Fatalf("a new session: %v", err)
			}
			lines, err := faultpkcs11.Logged(log)
			if err != nil || len(lines) != 1 || lines[0] != "C_GenerateRandom drop 1" {
				t.Fatalf("log %q %v", lines, err)
			}
			_ = p.CloseSession(keep)
			_ = p.CloseSession(fresh)
		})
	}
}

// DropAll loses every session of the copy at once (a fail-over).
func TestDropAllLosesEverySession(t *testing.T) {
	p, slot := raw(t, faultpkcs11.Config{Calls: []string{"C_GenerateRandom"}, Mode: faultpkcs11.Drop, Code: faultpkcs11.DeviceRemoved, DropAll: true, Rate: 1, Max: 1})
	a, b := session(t, p, slot), session(t, p, slot)
	if _, err := p.GenerateRandom(a, 8); !errors.Is(err, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)) {
		t.Fatalf("got %v", err)
	}
	if _, err := p.GenerateRandom(b, 8); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
		t.Fatalf("the other session survived a fail-over: %v", err)
	}
}

// Every disturbs calls at a fixed interval.
func TestEveryDisturbsAtIntervals(t *testing.T) {
	p, slot := raw(t, faultpkcs11.Config{Calls: []string{"C_GenerateRandom"}, Every: 3, After: 1})
	sh := session(t, p, slot)
	var got strings.Builder
	for i := 0; i < 9; i++ {
		if _, err := p.GenerateRandom(sh, 8); err != nil {
			got.WriteByte('x')
		} else {
			got.WriteByte('.')
		}
	}
	if got.String() != "...x..x.." {
		t.Fatalf("after 1, every 3: %s", got.String())
	}
}

// MaxSessions caps the open sessions of the copy and is what the token
// reports as its limit.
func TestMaxSessionsCapsAndIsReported(t *testing.T) {
	p, slot := raw(t, faultpkcs11.Config{MaxSessions: 3})
	var open []pkcs11.SessionHandle
	for i := 0; i < 3; i++ {
		open = append(open, session(t, p, slot))
	}
	if _, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_COUNT)) {
		t.Fatalf("fourth session: %v, want CKR_SESSION_COUNT", err)
	}
	ti, err := p.GetTokenInfo(slot)
	if err != nil || ti.MaxSessionCount != 3 || ti.MaxRwSessionCount != 3 || ti.SessionCount != 3 || ti.RwSessionCount != 3 {
		t.Fatalf("token info: %+v %v", ti, err)
	}
	if err := p.CloseSession(open[0]); err != nil {
		t.Fatal(err)
	}
	open[0] = session(t, p, slot) // room again
	// A dropped session no longer counts: the HSM forgot it.
	for _, sh := range open {
		_ = p.CloseSession(sh)
	}
	d, slot := raw(t, faultpkcs11.Config{MaxSessions: 1, Calls: []string{"C_GenerateRandom"}, Mode: faultpkcs11.Drop, Rate: 1, Max: 1})
	sh := session(t, d, slot)
	if _, err := d.GenerateRandom(sh, 8); err == nil {
		t.Fatal("no drop")
	}
	other := session(t, d, slot)
	_ = d.CloseSession(other)
}

// Delay slows the chosen calls; Trace logs them without touching them.
func TestDelayAndTrace(t *testing.T) {
	p, slot := raw(t, faultpkcs11.Config{Calls: []string{"C_GenerateRandom"}, Mode: faultpkcs11.Delay, Rate: 1, Delay: 150 * time.Millisecond})
	sh := session(t, p, slot)
	start := time.Now()
	if _, err := p.GenerateRandom(sh, 8); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("delayed call took %v", d)
	}
	log := filepath.Join(t.TempDir(), "trace.log")
	q, slot := raw(t, faultpkcs11.Config{Calls: faultpkcs11.Calls, Mode: faultpkcs11.Trace, Rate: 1, Log: log})
	sh = session(t, q, slot)
	if _, err := q.GenerateRandom(sh, 8); err != nil {
		t.Fatal(err)
	}
	lines, _ := faultpkcs11.Logged(log)
	// miekg/pkcs11 asks for the slot list twice: its length, then the list.
	want := []string{"C_GetSlotList trace", "C_GetSlotList trace", "C_GetTokenInfo trace", "C_OpenSession trace", "C_Login trace", "C_GenerateRandom trace"}
	var got []string
	for _, l := range lines {
		got = append(got, l[:strings.LastIndexByte(l, ' ')])
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("trace %q, want %q", got, want)
	}
}

func codeOf(t *testing.T, name string) uint {
	for c := uint(0); c < 0x200; c++ {
		if strings.HasSuffix(pkcs11.Error(c).Error(), name) {
			return c
		}
	}
	t.Fatalf("unknown code %s", name)
	return 0
}
