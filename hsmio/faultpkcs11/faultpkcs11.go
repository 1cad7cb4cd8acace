// Package faultpkcs11 builds and configures rekey's fault-injecting PKCS#11
// module (csrc/faultpkcs11.c): a module that forwards every call to a real
// one (SoftHSM2 here) and makes a chosen share of chosen calls fail, succeed
// with wrong data, lose their session, or take longer, the way a faulty or
// overloaded HSM does; it can also cap the number of open sessions, as a
// token with a small session limit does. The fault tests point a key URI's
// module-path at it.
//
// It is test tooling: no production job should name it. Nothing here reads
// or prints key material; the module's log names calls, never data.
//
// Each loaded copy of the module reads its configuration once, from a file
// beside it (what Instance writes) or from the REKEY_FAULT_* environment
// variables, so one process can hold several differently configured copies.
// The real module is shared by all of them and by every other user in the
// process.
//
// Limits: Linux with gcc (or $CC); the C source is compiled against the
// PKCS#11 headers that github.com/miekg/pkcs11 ships, found with `go list`.
package faultpkcs11

import (
	"bufio"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

//go:embed csrc/faultpkcs11.c
var source []byte

// EnvPrebuilt names a module built ahead (make faultpkcs11 sets it for
// make test); without it Build compiles one into the user cache.
const EnvPrebuilt = "REKEY_FAULTPKCS11"

// Calls the module can disturb: every function that takes a session but
// C_CloseSession, and the token queries (the CALLS list of the C source).
var Calls = []string{"C_GetSlotList", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_OpenSession",
	"C_GetSessionInfo", "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
	"C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal",
	"C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate",
	"C_DecryptFinal", "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal", "C_SignInit",
	"C_Sign", "C_SignUpdate", "C_SignFinal", "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal",
	"C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey", "C_SeedRandom",
	"C_GenerateRandom", "C_GetOperationState", "C_SetOperationState", "C_InitPIN", "C_SetPIN", "C_SignRecoverInit",
	"C_SignRecover", "C_VerifyRecoverInit", "C_VerifyRecover", "C_DigestEncryptUpdate", "C_DecryptDigestUpdate",
	"C_SignEncryptUpdate", "C_DecryptVerifyUpdate", "C_GetFunctionStatus", "C_CancelFunction"}

// Modes.
const (
	Fail    = "fail"    // the call returns Code without doing anything visible
	Corrupt = "corrupt" // the call succeeds and one bit of its output is flipped
	// Drop: the call returns Code (default CKR_SESSION_HANDLE_INVALID) and
	// the HSM forgets its session (all sessions of the copy with DropAll):
	// every later call on it returns CKR_SESSION_HANDLE_INVALID.
	Drop  = "drop"
	Delay = "delay" // the call sleeps Delay, then runs
	Trace = "trace" // the call runs untouched and is logged
)

// Session-loss codes a Drop can answer with.
const (
	SessionHandleInvalid = "CKR_SESSION_HANDLE_INVALID"
	SessionClosed        = "CKR_SESSION_CLOSED"
	DeviceRemoved        = "CKR_DEVICE_REMOVED"
	TokenNotPresent      = "CKR_TOKEN_NOT_PRESENT"
)

// Config is one configuration of the module (see csrc/faultpkcs11.c for the
// exact semantics of each setting).
type Config struct {
	Module string   // the real module; default SoftHSM2's
	Calls  []string // calls to disturb; none: forward everything
	Mode   string   // Fail (default), Corrupt, Drop, Delay or Trace
	Rate   float64  // share of eligible calls disturbed, 0..1 (always written: 0 means none)
	Code   string   // fail and drop mode's CKR_ name or number; default CKR_DEVICE_ERROR (fail), CKR_SESSION_HANDLE_INVALID (drop)
	Seed   uint64   // which calls are chosen depends on the seed and the call's index only
	After  uint64   // the first After eligible calls are never disturbed
	Every  uint64   // > 0: disturb every Every-th eligible call after those (Rate is then ignored)
	Max    uint64   // at most Max calls disturbed; 0: no limit
	Log    string   // file getting one line per disturbed (in Trace mode: traced) call, and per session MaxSessions refused
	// DropAll makes a Drop lose every session of the copy at once (a
	// network HSM failing over), not just the call's.
	DropAll bool
	Delay   time.Duration // Delay mode's sleep; default 100ms
	// MaxSessions > 0 caps the sessions open through the copy at once:
	// C_OpenSession past it returns CKR_SESSION_COUNT, and C_GetTokenInfo
	// reports it as the token's ulMaxSessionCount and ulMaxRwSessionCount.
	// It applies whatever Mode and Calls are.
	MaxSessions int
}

// Validate checks c before any module is loaded with it.
func (c Config) Validate() error {
	for _, name := range c.Calls {
		known := false
		for _, k := range Calls {
			known = known || k == name
		}
		if !known {
			return fmt.Errorf("faultpkcs11: unknown call %q (known: %s)", name, strings.Join(Calls, ", "))
		}
	}
	switch c.Mode {
	case "", Fail, Corrupt, Drop, Delay, Trace:
	default:
		return fmt.Errorf("faultpkcs11: mode %q is not %s, %s, %s, %s or %s", c.Mode, Fail, Corrupt, Drop, Delay, Trace)
	}
	if c.Delay < 0 || c.MaxSessions < 0 {
		return fmt.Errorf("faultpkcs11: negative delay %v or session cap %d", c.Delay, c.MaxSessions)
	}
	if !(c.Rate >= 0 && c.Rate <= 1) {
		return fmt.Errorf("faultpkcs11: rate %g is not between 0 and 1", c.Rate)
	}
	return nil
}

// Environ returns c as REKEY_FAULT_* variables (KEY=VALUE).
func (c Config) Environ() []string {
	env := []string{
		"REKEY_FAULT_CALLS=" + strings.Join(c.Calls, ","),
		"REKEY_FAULT_RATE=" + strconv.FormatFloat(c.Rate, 'g', -1, 64),
		"REKEY_FAULT_SEED=" + strconv.FormatUint(c.Seed, 10),
		"REKEY_FAULT_AFTER=" + strconv.FormatUint(c.After, 10),
		"REKEY_FAULT_EVERY=" + strconv.FormatUint(c.Every, 10),
		"REKEY_FAULT_MAX=" + strconv.FormatUint(c.Max, 10),
		"REKEY_FAULT_MAX_SESSIONS=" + strconv.Itoa(c.MaxSessions),
	}
	if c.DropAll {
		env = append(env, "REKEY_FAULT_DROP=all")
	}
	if c.Delay > 0 {
		env = append(env, "REKEY_FAULT_DELAY_MS="+strconv.FormatInt(c.Delay.Milliseconds(), 10))
	}
	for k, v := range map[string]string{"REKEY_FAULT_MODULE": c.Module, "REKEY_FAULT_MODE": c.Mode, "REKEY_FAULT_CODE": c.Code, "REKEY_FAULT_LOG": c.Log} {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

var (
	buildOnce sync.Once
	built     string
	buildErr  error
	copies    atomic.Int64
)

// Build returns the path of the compiled module: $REKEY_FAULTPKCS11 if set,
// else a build of the embedded source in the user cache, compiled once per
// source version.
func Build() (string, error) {
	buildOnce.Do(func() { built, buildErr = build() })
	return built, buildErr
}

func build() (string, error) {
	if p := os.Getenv(EnvPrebuilt); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("faultpkcs11: $%s: %w (run make faultpkcs11, or unset it to build into the cache)", EnvPrebuilt, err)
		}
		return p, nil
	}
	if runtime.GOOS != "linux" {
		return "", fmt.Errorf("faultpkcs11: only Linux is supported, not %s", runtime.GOOS)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		return "", fmt.Errorf("faultpkcs11: no C compiler %q on PATH (apt-get install gcc): %w", cc, err)
	}
	inc, err := headerDir()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, part := range [][]byte{source, []byte(inc), []byte(cc)} {
		h.Write(part)
		h.Write([]byte{0})
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "rekey", "faultpkcs11", hex.EncodeToString(h.Sum(nil)[:8]))
	out := filepath.Join(dir, "libfaultpkcs11.so")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Another test process may build at the same time: each compiles into
	// its own temporary and renames it into place.
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "faultpkcs11.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", err
	}
	so := filepath.Join(tmp, "libfaultpkcs11.so")
	cmd := exec.Command(cc, CFlags(inc, so, src)...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("faultpkcs11: %s %s: %v\n%s", cc, strings.Join(cmd.Args[1:], " "), err, msg)
	}
	if err := os.Rename(so, out); err != nil {
		return "", err
	}
	return out, nil
}

// CFlags are the compiler arguments that build the module (the Makefile
// uses the same).
func CFlags(include, out, src string) []string {
	return []string{"-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
		"-I" + include, "-o", out, src, "-ldl", "-lpthread"}
}

// headerDir finds the PKCS#11 headers of github.com/miekg/pkcs11 in the
// module cache.
func headerDir() (string, error) {
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/miekg/pkcs11")
	cmd.Dir = filepath.Dir(self)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("faultpkcs11: find the PKCS#11 headers (go list -m github.com/miekg/pkcs11): %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, "pkcs11.h")); err != nil {
		return "", fmt.Errorf("faultpkcs11: no pkcs11.h in %q (go mod download github.com/miekg/pkcs11): %w", dir, err)
	}
	return dir, nil
}

// Instance copies the module into dir under a name of its own, with c in
// the file beside it that the copy reads when it is loaded, and returns the
// copy's path. Each copy is a separate library to the dynamic loader, so it
// has its own configuration and counters.
func Instance(dir string, c Config) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	lib, err := Build()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(lib)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("libfaultpkcs11-%d-%d.so", os.Getpid(), copies.Add(1)))
	if err := os.WriteFile(path, b, 0o755); err != nil {
		return "", err
	}
	conf := strings.Join(c.Environ(), "\n") + "\n"
	if err := os.WriteFile(path+".env", []byte(conf), 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// ForTest is Instance in a test's temporary folder. When the module cannot
// be built the test is skipped, or fails when $CI is set (a missing
// dependency must not pass silently there).
func ForTest(t testing.TB, c Config) string {
	t.Helper()
	path, err := Instance(t.TempDir(), c)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("fault-injecting PKCS#11 module (CI is set, so a missing dependency fails): %v", err)
		}
		t.Skipf("fault-injecting PKCS#11 module unavailable: %v", err)
	}
	return path
}

// Logged returns the lines of a module log (Config.Log): one per disturbed
// (or traced) call, "<call> <mode> <index>", where index counts the copy's
// eligible calls from 0, and one per session refused for MaxSessions,
// "C_OpenSession session-count <index>". A missing log means no call was
// disturbed.
func Logged(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	return lines, s.Err()
}
