package inventory

import (
	"fmt"
	"os"
	"testing"

	"rekey/hsmio/softhsm"
)

// TestMain creates the SoftHSM tokens ksrc, kdst and kdst2 (keyFixtures puts
// the keys on them): SoftHSM reads its config once per process.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP hsmio/inventory tests:", err)
		return 0
	}
	dir, err := os.MkdirTemp("", "rekey-inventory-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	conf, err := softhsm.Setup(dir)
	if err != nil {
		panic(err)
	}
	for _, tok := range []string{"ksrc", "kdst", "kdst2"} {
		if err := softhsm.InitToken(conf, tok, "5678", fixturePIN); err != nil {
			panic(err)
		}
	}
	os.Setenv("REKEY_TEST_PIN", fixturePIN)
	return m.Run()
}
