package keystest_test

import (
	"os"
	"testing"

	"rekey/providers/keystest"
)

// A backend's conformance test is one call in its package's tests. Here
// the backend is the fake "fakekms" scheme this package's tests register
// (fake_test.go); a KMS provider names its own scheme, mechanisms and test
// keys the same way.
func ExampleRun() {
	TestConformance := func(t *testing.T) {
		keystest.Run(t, keystest.Backend{
			Mechanisms: []string{"fakekms-gcm", "fakekms-sealed"},
			Open:       keystest.OpenRef("fakekms:eu/key-1?credential=env:FAKEKMS_CREDENTIAL"),
			Other:      keystest.OpenRef("fakekms:eu/key-2?credential=env:FAKEKMS_CREDENTIAL"),
			Missing:    "fakekms:eu/no-such-key?credential=env:FAKEKMS_CREDENTIAL",
			Binds:      func(mech string) bool { return mech == "fakekms-gcm" },
			Secrets:    [][]byte{[]byte(os.Getenv("FAKEKMS_CREDENTIAL"))},
		})
	}
	_ = TestConformance // a top-level func TestConformance(t *testing.T) in a _test.go file
}
