package hsmio_test

// Lost sessions, session limits, a preflight under faults and a mechanism
// the token lacks (issue 15, items 2, 3, 4 and 10), through rekey's
// fault-injecting PKCS#11 module (hsmio/faultpkcs11) wrapping SoftHSM2.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/faultpkcs11"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

// faultOpen opens object on "src" through a copy of the fault module
// configured with c (its own library, token state and session pool).
func faultOpen(t *testing.T, c faultpkcs11.Config, object, wrap string, sessions int) (*hsmio.KEK, string) {
	t.Helper()
	lib := faultpkcs11.ForTest(t, c)
	k, err := hsmio.Open(t.Context(), faultURI(lib, object), keys.Options{Wrap: wrap, Sessions: sessions})
	if err != nil {
		t.Fatal(err)
	}
	return k, lib
}

func faultURI(lib, object string) string {
	return fmt.Sprintf("pkcs11:token=src;object=%s?module-path=%s&pin-source=env:REKEY_TEST_PIN", object, lib)
}

// exercise runs ops operations (HSM random, wrap, unwrap, compare) from
// workers goroutines through keys.WithRetry, as the pipeline does, and
// fails the test on any error.
func exercise(t *testing.T, k keys.KEK, workers, ops int) {
	t.Helper()
	ctx := t.Context()
	r := keys.WithRetry(k, keys.RetryPolicy{Base: time.Millisecond})
	var wg sync.WaitGroup
	errs := make(chan error, workers*ops)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < ops; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				dek, err := keys.Generate(ctx, r)
				if err != nil {
					errs <- fmt.Errorf("generate: %w", err)
					return
				}
				wrapped, err := r.Wrap(ctx, keys.ByID(id), dek)
				if err != nil {
					errs <- fmt.Errorf("wrap: %w", err)
					return
				}
				got, err := r.Unwrap(ctx, keys.ByID(id), k.Mechanism(), wrapped)
				if err != nil {
					errs <- fmt.Errorf("unwrap: %w", err)
					return
				}
				if !bytes.Equal(got.Bytes(), dek.Bytes()) {
					errs <- errors.New("round trip changed the DEK")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestLostSessionsAreReplaced (item 2): the HSM drops sessions at
// intervals on every call an operation makes (AES-GCM encrypt and decrypt,
// C_WrapKey/C_UnwrapKey, RSA-OAEP decrypt, HSM random), with each of the
// codes a lost session shows: every operation through keys.WithRetry
// succeeds, because each lost session is replaced.
func TestLostSessionsAreReplaced(t *testing.T) {
	for _, tc := range []struct {
		name, object, wrap string
		calls              []string
	}{
		{"aes-gcm", "kek-aes", schemas.WrapAESGCM, []string{"C_Encrypt", "C_Decrypt", "C_GenerateRandom"}},
		{"aes-kwp", "kek-aes", schemas.WrapAESKWP, []string{"C_WrapKey", "C_UnwrapKey", "C_GenerateRandom"}},
		{"rsa-oaep-sha1", "kek-rsa", schemas.WrapRSAOAEPSHA1, []string{"C_Decrypt", "C_GenerateRandom"}},
	} {
		for _, code := range []string{faultpkcs11.SessionHandleInvalid, faultpkcs11.SessionClosed, faultpkcs11.DeviceRemoved, faultpkcs11.TokenNotPresent} {
			t.Run(tc.name+"/"+code, func(t *testing.T) {
				log := filepath.Join(t.TempDir(), "faults.log")
				k, _ := faultOpen(t, faultpkcs11.Config{Calls: tc.calls, Mode: faultpkcs11.Drop, Code: code, Every: 19, Log: log}, tc.object, tc.wrap, 4)
				exercise(t, k, 4, 15)
				if lines, _ := faultpkcs11.Logged(log); len(lines) < 6 {
					t.Fatalf("only %d sessions dropped: %v", len(lines), lines)
				}
			})
		}
	}
	// A fail-over: the HSM loses every session of the process at once.
	t.Run("fail-over", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "faults.log")
		k, _ := faultOpen(t, faultpkcs11.Config{Calls: []string{"C_Encrypt", "C_Decrypt"}, Mode: faultpkcs11.Drop, Code: faultpkcs11.DeviceRemoved, DropAll: true, Every: 19, Log: log}, "kek-aes", schemas.WrapAESGCM, 4)
		exercise(t, k, 4, 15)
		if lines, _ := faultpkcs11.Logged(log); len(lines) < 5 {
			t.Fatalf("only %d fail-overs: %v", len(lines), lines)
		}
	})
}

// TestLoginLostInAFailOver: the token really closes every session of the
// process (SoftHSM then logs the application out, as an HSM that failed
// over does): the next operation gets a fresh session, finds it logged
// out, logs in again and succeeds, without any retry from outside.
func TestLoginLostInAFailOver(t *testing.T) {
	ctx := t.Context()
	k, err := hsmio.Open(ctx, uri("failover", "kek-aes"), keys.Options{Sessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	dek, _ := keys.NewDEK(bytes.Repeat([]byte{7}, 32))
	w, err := k.Wrap(ctx, keys.ByID("f"), dek)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := hsmio.OpenRawToken(hsmio.URI{Token: "failover", ModulePath: softhsm.Module, PinSource: "env:REKEY_TEST_PIN"})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Ctx.CloseAllSessions(raw.Slot); err != nil {
		t.Fatal(err)
	}
	// The application is logged out now: a new session is public.
	probe, err := raw.Ctx.OpenSession(raw.Slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	info, err := raw.Ctx.GetSessionInfo(probe)
	_ = raw.Ctx.CloseSession(probe)
	if err != nil || info.State != pkcs11.CKS_RO_PUBLIC_SESSION {
		t.Fatalf("closing every session did not log out: state %d, %v", info.State, err)
	}
	got, err := k.Unwrap(ctx, keys.ByID("f"), schemas.WrapAESGCM, w)
	if err != nil {
		t.Fatalf("after the token lost every session: %v", err)
	}
	if !bytes.Equal(got.Bytes(), dek.Bytes()) {
		t.Fatal("round trip changed the DEK")
	}
	if checks := k.Preflight(ctx, true, true); failed(checks) != "" {
		t.Fatalf("preflight after the fail-over: %s", failed(checks))
	}
}

func failed(checks []keys.Check) string {
	var b strings.Builder
	for _, c := range checks {
		if !c.OK {
			fmt.Fprintf(&b, "[FAIL] %s: %s\n", c.Name, c.Info)
		}
	}
	return b.String()
}

// preflightCalls lists the PKCS#11 calls that opening object with wrap and
// preflighting it make, by name, with how often each is made (a copy of the
// module in trace mode logs them).
func preflightCalls(t *testing.T, object, wrap string) map[string]int {
	t.Helper()
	log := filepath.Join(t.TempDir(), "trace.log")
	k, _ := faultOpen(t, faultpkcs11.Config{Calls: faultpkcs11.Calls, Mode: faultpkcs11.Trace, Rate: 1, Log: log}, object, wrap, 2)
	if f := failed(k.Preflight(t.Context(), true, true)); f != "" {
		t.Fatalf("preflight without faults: %s", f)
	}
	lines, err := faultpkcs11.Logged(log)
	if err != nil || len(lines) < 10 {
		t.Fatalf("trace: %v %v", lines, err)
	}
	n := map[string]int{}
	for _, l := range lines {
		n[strings.Fields(l)[0]]++
	}
	return n
}

// TestPreflightRetriesEveryCall (item 3): one transient fault in any HSM
// call that opening a key and preflighting it make (each call in turn,
// failed with CKR_DEVICE_ERROR or with its session dropped) is retried:
// Open succeeds and the preflight passes; a fault the preflight absorbed is
// reported as a warning naming the error, and no message claims a retry
// that was not made.
func TestPreflightRetriesEveryCall(t *testing.T) {
	for _, tc := range []struct{ object, wrap string }{
		{"kek-aes", schemas.WrapAESGCM}, {"kek-aes", schemas.WrapAESKWP}, {"kek-rsa", schemas.WrapRSAOAEPSHA1},
	} {
		t.Run(tc.wrap, func(t *testing.T) {
			calls := preflightCalls(t, tc.object, tc.wrap)
			total := 0
			for call, n := range calls {
				for i := 0; i < n; i++ {
					for _, mode := range []string{faultpkcs11.Fail, faultpkcs11.Drop} {
						log := filepath.Join(t.TempDir(), "faults.log")
						c := faultpkcs11.Config{Calls: []string{call}, Mode: mode, Rate: 1, After: uint64(i), Max: 1, Log: log}
						lib := faultpkcs11.ForTest(t, c)
						k, err := hsmio.Open(t.Context(), faultURI(lib, tc.object), keys.Options{Wrap: tc.wrap, Sessions: 2})
						if err != nil {
							t.Fatalf("%s #%d %s: open: %v", call, i, mode, err)
						}
						checks := k.Preflight(t.Context(), true, true)
						if f := failed(checks); f != "" {
							t.Fatalf("%s #%d %s: %s", call, i, mode, f)
						}
						if lines, _ := faultpkcs11.Logged(log); len(lines) != 1 {
							t.Fatalf("%s #%d %s: the fault was not injected: %v", call, i, mode, lines)
						}
						for _, ch := range checks {
							if strings.Contains(ch.Info, "retried)") {
								t.Fatalf("%s #%d %s: check claims a retry in the error's own words: %s", call, i, mode, ch.Info)
							}
						}
						total++
					}
				}
			}
			t.Logf("%d faults, one per run, on %d kinds of call: every preflight passed", total, len(calls))
		})
	}
}

// TestTransientErrorsSayNoRetry (item 3): a transient error says what it is;
// only the retry layer says that it tried, and how often.
func TestTransientErrorsSayNoRetry(t *testing.T) {
	k, _ := faultOpen(t, faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Rate: 1}, "kek-aes", schemas.WrapAESGCM, 2)
	w, err := k.Wrap(t.Context(), keys.ByID("x"), mustDEK(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = k.Unwrap(t.Context(), keys.ByID("x"), schemas.WrapAESGCM, w)
	if !keys.IsRetryable(err) || strings.Contains(err.Error(), "retried") || !strings.Contains(err.Error(), "transient HSM error") {
		t.Fatalf("one attempt: %v", err)
	}
	_, err = keys.WithRetry(k, keys.RetryPolicy{Attempts: 3, Base: time.Millisecond}).Unwrap(t.Context(), keys.ByID("x"), schemas.WrapAESGCM, w)
	if err == nil || !strings.HasPrefix(err.Error(), "gave up after 3 attempts: ") || strings.Count(err.Error(), "transient HSM error") != 1 {
		t.Fatalf("three attempts: %v", err)
	}
}

func mustDEK(t *testing.T) *keys.DEK {
	d, err := keys.NewDEK(bytes.Repeat([]byte{0x33}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSessionLimitSizesThePool (item 4): a token allowing 3, 4 or 7
// sessions runs 8 concurrent workers: hsmio keeps one session for
// crypto11's login and, if two are left for operations after it, one
// holding the session copies of the keys (else the keys' token objects are
// used, and the preflight says why); it splits the rest between crypto11's
// pool and the raw calls, says so in the preflight (the workers are
// capped), reports the cap through KEK.Sessions, and no operation fails,
// on either path.
func TestSessionLimitSizesThePool(t *testing.T) {
	for _, tc := range []struct {
		limit, gcm, kwp int // sessions usable by aes-gcm and by aes-kwp operations
		copy            bool
	}{{3, 1, 1, false}, {4, 1, 1, true}, {7, 4, 4, true}} {
		t.Run(fmt.Sprint(tc.limit), func(t *testing.T) {
			lib := faultpkcs11.ForTest(t, faultpkcs11.Config{MaxSessions: tc.limit})
			for _, wrap := range []string{schemas.WrapAESGCM, schemas.WrapAESKWP} {
				k, err := hsmio.Open(t.Context(), faultURI(lib, "kek-aes"), keys.Options{Wrap: wrap, Sessions: 8})
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]int{schemas.WrapAESGCM: tc.gcm, schemas.WrapAESKWP: tc.kwp}[wrap]
				if got := k.Sessions(); got != want || k.SessionLimit() != tc.limit {
					t.Fatalf("%s: Sessions() = %d, SessionLimit() = %d; want %d, %d", wrap, got, k.SessionLimit(), want, tc.limit)
				}
				checks := k.Preflight(t.Context(), true, true)
				if f := failed(checks); f != "" {
					t.Fatal(f)
				}
				capped := false
				for _, c := range checks {
					capped = capped || (c.Warn && strings.Contains(c.Info, fmt.Sprintf("workers capped to %d HSM sessions by the token's session limit %d", want, tc.limit)))
					if strings.Contains(c.Info, "retried") {
						t.Errorf("a check claims a retry: %s", c.Info)
					}
				}
				if !capped {
					t.Fatalf("the preflight does not say the workers were capped: %+v", checks)
				}
				want1 := "token object: the token's session limit (3 sessions, 0 open elsewhere) leaves no room"
				if tc.copy {
					want1 = "session copy of the KEK"
				}
				if info := handleCheck(checks); !strings.HasPrefix(info, want1) {
					t.Fatalf("preflight: %q, want %q", info, want1)
				}
				exercise(t, k, 8, 10)
			}
		})
	}
}

// TestSessionCountIsWaitedOut (item 4): another application holds the
// sessions the pool would open; the token answers CKR_SESSION_COUNT, and
// the operations wait for a session instead of failing.
func TestSessionCountIsWaitedOut(t *testing.T) {
	// The copy logs every session it refuses; its C_Encrypt is slow, so
	// that the workers want sessions at the same time.
	log := filepath.Join(t.TempDir(), "refused.log")
	// Of the 6 sessions, the login and the copies' holder take 2,
	// crypto11's pool (of 3) opens 2 to find the key and its session copy
	// (it opens a new session while it has room), the other user takes
	// the other 2, and the third worker waits for one of them.
	k, lib := faultOpen(t, faultpkcs11.Config{MaxSessions: 6, Calls: []string{"C_Encrypt"}, Mode: faultpkcs11.Delay, Delay: 10 * time.Millisecond, Rate: 1, Log: log}, "kek-aes", schemas.WrapAESGCM, 3)
	// The same copy of the module, as another user in the process: its
	// sessions count against the same limit.
	other := pkcs11.New(lib)
	if err := other.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slot := tokenSlot(t, other, "src")
	var held []pkcs11.SessionHandle
	for {
		sh, err := other.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_COUNT)) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, sh)
	}
	if len(held) == 0 {
		t.Fatal("the pool took every session already")
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		for _, sh := range held {
			_ = other.CloseSession(sh)
		}
	}()
	exercise(t, k, 3, 10)
	lines, _ := faultpkcs11.Logged(log)
	refused := -1 // the other user's last open
	for _, l := range lines {
		if strings.HasPrefix(l, "C_OpenSession session-count ") {
			refused++
		}
	}
	if refused < 1 {
		t.Fatalf("the token never refused hsmio a session (the test proves nothing): %v", lines)
	}
	t.Logf("the token refused hsmio %d sessions with CKR_SESSION_COUNT; no operation failed", refused)
	// A token with no session left for rekey at all refuses to open,
	// saying why, after retrying.
	// (The other application is a crypto11 Context, one session, and a
	// raw session: crypto11 must be the first to initialize a module.)
	fullLib := faultpkcs11.ForTest(t, faultpkcs11.Config{MaxSessions: 3})
	c11, err := crypto11.Configure(&crypto11.Config{Path: fullLib, TokenLabel: "src", Pin: os.Getenv("REKEY_TEST_PIN"), MaxSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c11.Close() }()
	full := modCopy{pkcs11.New(fullLib), fullLib}
	if err := full.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	if _, err := full.OpenSession(tokenSlot(t, full.Ctx, "src"), pkcs11.CKF_SERIAL_SESSION); err != nil {
		t.Fatal(err)
	}
	_, err = hsmio.Open(t.Context(), faultURI(full.lib, "kek-aes"), keys.Options{Sessions: 2})
	if err == nil || !strings.Contains(err.Error(), "the token allows 3 sessions and 2 are open") || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("open on a full token: %v", err)
	}
}

type modCopy struct {
	*pkcs11.Ctx
	lib string
}

func tokenSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == label {
			return s
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}

// TestUnofferedOAEPNamesTheMechanism (item 10): SoftHSM2 wraps rsa-oaep-sha256
// (in software, with the public key) but cannot unwrap it (C_DecryptInit:
// CKR_ARGUMENTS_BAD). The preflight names the wrap and the PKCS#11
// mechanism and suggests the one the token does (rsa-oaep-sha1, tested);
// later wraps and unwraps with it are refused at once, the same way.
func TestUnofferedOAEPNamesTheMechanism(t *testing.T) {
	ctx := t.Context()
	k, err := hsmio.Open(ctx, uri("src", "kek-rsa"), keys.Options{Wrap: schemas.WrapRSAOAEPSHA256})
	if err != nil {
		t.Fatal(err)
	}
	f := failed(k.Preflight(ctx, true, true))
	for _, want := range []string{"rsa-oaep-sha256", "CKM_RSA_PKCS_OAEP with SHA-256", "CKR_ARGUMENTS_BAD", "it offers rsa-oaep-sha1", "--target-wrap rsa-oaep-sha1"} {
		if !strings.Contains(f, want) {
			t.Errorf("preflight does not say %q:\n%s", want, f)
		}
	}
	if _, err := k.Wrap(ctx, keys.ByID("x"), mustDEK(t)); !errors.Is(err, keys.ErrMechanism) || !strings.Contains(err.Error(), "it offers rsa-oaep-sha1") {
		t.Errorf("wrap with a mechanism the token cannot unwrap: %v", err)
	}
	other, err := hsmio.Open(ctx, uri("src", "kek-rsa"), keys.Options{Wrap: schemas.WrapRSAOAEPSHA1})
	if err != nil {
		t.Fatal(err)
	}
	if f := failed(other.Preflight(ctx, true, true)); f != "" {
		t.Fatalf("the suggested wrap fails: %s", f)
	}
}

// TestLostSessionReplacedWithinTheCall (item 2): without any retry from
// outside, one call survives the loss of its session on the crypto11 path
// (AES-GCM seal and open, RSA-OAEP decrypt, HSM random) and on the raw path
// (C_WrapKey, C_UnwrapKey): hsmio replaces the session, or crypto11's whole
// generation, and runs the call again.
func TestLostSessionReplacedWithinTheCall(t *testing.T) {
	for _, tc := range []struct {
		object, wrap, call string
	}{
		{"kek-aes", schemas.WrapAESGCM, "C_Encrypt"},
		{"kek-aes", schemas.WrapAESGCM, "C_Decrypt"},
		{"kek-aes", schemas.WrapAESKWP, "C_WrapKey"},
		{"kek-aes", schemas.WrapAESKWP, "C_UnwrapKey"},
		{"kek-rsa", schemas.WrapRSAOAEPSHA1, "C_Decrypt"},
		{"kek-aes", schemas.WrapAESGCM, "C_GenerateRandom"},
	} {
		for _, drop := range []struct {
			code string
			all  bool
		}{{faultpkcs11.SessionHandleInvalid, false}, {faultpkcs11.DeviceRemoved, true}} {
			t.Run(fmt.Sprintf("%s/%s/%s/all=%v", tc.wrap, tc.call, drop.code, drop.all), func(t *testing.T) {
				log := filepath.Join(t.TempDir(), "faults.log")
				// Open makes no such call: the first of the test's is dropped.
				k, _ := faultOpen(t, faultpkcs11.Config{Calls: []string{tc.call}, Mode: faultpkcs11.Drop, Code: drop.code, DropAll: drop.all, Rate: 1, Max: 1, Log: log}, tc.object, tc.wrap, 2)
				ctx := t.Context()
				dek := mustDEK(t)
				if tc.call == "C_GenerateRandom" {
					var err error
					if dek, err = k.GenerateDEK(ctx); err != nil {
						t.Fatalf("generate: %v", err)
					}
				}
				w, err := k.Wrap(ctx, keys.ByID("x"), dek)
				if err != nil {
					t.Fatalf("wrap: %v", err)
				}
				got, err := k.Unwrap(ctx, keys.ByID("x"), tc.wrap, w)
				if err != nil {
					t.Fatalf("unwrap: %v", err)
				}
				if !bytes.Equal(got.Bytes(), dek.Bytes()) {
					t.Fatal("round trip changed the DEK")
				}
				if lines, _ := faultpkcs11.Logged(log); len(lines) != 1 {
					t.Fatalf("the session was not dropped: %v", lines)
				}
			})
		}
	}
}
