package keystest_test

import (
	"os"
	"os/exec"
	"regexp"
	"testing"

	"rekey/providers/keys"
	"rekey/providers/keystest"
)

func TestMain(m *testing.M) {
	os.Setenv("FAKEKMS_CREDENTIAL", fakeCredential)
	os.Exit(m.Run())
}

func fakeBackend() keystest.Backend {
	return keystest.Backend{
		Mechanisms: []string{fakeGCM, fakeSealed},
		Open:       keystest.OpenRef("fakekms:eu/key-1?credential=env:FAKEKMS_CREDENTIAL"),
		Other:      keystest.OpenRef("fakekms:eu/key-2?credential=env:FAKEKMS_CREDENTIAL"),
		Missing:    "fakekms:eu/no-such-key?credential=env:FAKEKMS_CREDENTIAL",
		Binds:      func(mech string) bool { return mech == fakeGCM },
		// Fewer lengths than the fake takes, for the undeclared-length check.
		SecretLens: func(mech string) []int {
			if mech == fakeSealed {
				return []int{16, 24, 32, 40, 48, 56, 64}
			}
			return nil
		},
		Secrets: [][]byte{[]byte(fakeCredential)},
		Private: []string{"credential", "FAKEKMS_CREDENTIAL"},
		Transient: func(t *testing.T, mech string) keys.KEK {
			return &flakyKEK{KEK: keystest.OpenRef("fakekms:eu/key-1?credential=env:FAKEKMS_CREDENTIAL")(t, mech)}
		},
	}
}

// The suite passes a correct backend.
func TestConformanceFake(t *testing.T) {
	keystest.Run(t, fakeBackend())
}

// TestKeystestBrokenFake runs the suite on a broken fake; it is run by
// TestKeystestCatchesBrokenBackends in a child process, where its
// failures are the expected result.
func TestKeystestBrokenFake(t *testing.T) {
	broken = os.Getenv("KEYSTEST_BROKEN")
	if broken == "" {
		t.Skip("run by TestKeystestCatchesBrokenBackends")
	}
	b := fakeBackend()
	switch broken {
	case "unbound-known":
		broken = "unbound"
		b.KnownFailures = map[string]string{"Binding/fakekms-gcm": "the fake ignores bindings", "Concurrent/fakekms-gcm": "as Binding"}
	case "fixed-known":
		broken = ""
		b.KnownFailures = map[string]string{"Binding/fakekms-gcm": "the fake ignored bindings once"}
	}
	keystest.Run(t, b)
}

// Each check bites: the suite fails a fake with the bug it looks for, and
// says what is wrong.
func TestKeystestCatchesBrokenBackends(t *testing.T) {
	for _, c := range []struct {
		bug  string
		pass bool     // the run passes (a known failure)
		want []string // in the output, as regular expressions
	}{
		{"unbound", false, []string{`--- FAIL: .*/Binding/fakekms-gcm`, `dek_id changed: .*accepted`}},
		{"unauthenticated", false, []string{`--- FAIL: .*/WrongKey/fakekms-gcm`, `--- FAIL: .*/Corrupt/fakekms-gcm/last-bit-flipped`, `different secret without an error`}},
		{"leaky-error", false, []string{`--- FAIL: .*/Binding/fakekms-gcm`, `contains the DEK as hex: .*<SECRET>`}},
		{"leaky-credential", false, []string{`--- FAIL: .*/Missing/NotFound`, `contains a backend secret \(Backend.Secrets\) as raw bytes`}},
		{"panicky", false, []string{`--- FAIL: .*/Corrupt/fakekms-gcm/empty`, `panic: runtime error`}},
		{"retryable", false, []string{`--- FAIL: .*/Classification/fakekms-gcm`, `marked retryable`}},
		{"notfound", false, []string{`--- FAIL: .*/Missing/NotFound`, `want ErrKeyNotFound`}},
		{"typednil", false, []string{`--- FAIL: .*/Missing/NilKEK`, `non-nil keys.KEK \(\*keystest_test.fakeKEK\)`}},
		{"short-generator", false, []string{`--- FAIL: .*/Generator/fakekms-gcm`, `16-byte DEK, want 32`}},
		{"redaction", false, []string{`--- FAIL: .*/Refs/fakekms-gcm`, `Redacted = .* contains "credential"`}},
		{"lossy-length", false, []string{`--- FAIL: .*/UndeclaredLengths/fakekms-sealed`, `Unwrap returns changed`, `--- FAIL: .*/RoundTrip/fakekms-gcm`}},
		{"permanent-throttle", false, []string{`--- FAIL: .*/Transient/fakekms-gcm`, `not retryable`}},
		{"unbound-known", true, []string{`known failure \(the fake ignores bindings\) still fails`}},
		{"fixed-known", false, []string{`Binding/fakekms-gcm passes now: remove it from Backend.KnownFailures`}},
	} {
		t.Run(c.bug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestKeystestBrokenFake$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "KEYSTEST_BROKEN="+c.bug)
			out, err := cmd.CombinedOutput()
			if _, exited := err.(*exec.ExitError); err != nil && !exited {
				t.Fatal(err)
			}
			if passed := err == nil; passed != c.pass {
				t.Errorf("the suite's run on a %q fake passed: %v, want %v", c.bug, passed, c.pass)
			}
			for _, w := range c.want {
				if !regexp.MustCompile(w).Match(out) {
					t.Errorf("output lacks %q", w)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}
