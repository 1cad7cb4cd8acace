package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"rekey/hsmio/inventory"
	"rekey/hsmio/softhsm"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// The keys tests run rekey in child processes of this test binary, on a
// SoftHSM store of their own: SoftHSM reads SOFTHSM2_CONF once per process,
// and this process's store (TestMain) has other tokens. A child is this
// binary with REKEY_KEYS_CHILD set; the init below runs its one job and
// exits before TestMain starts.

const keysPIN = "kt-pin-2468"

var keysMsg = []byte("a record signed by the old HSM\n")

func init() {
	switch os.Getenv("REKEY_KEYS_CHILD") {
	case "":
		return
	case "cli":
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv("REKEY_KEYS_ARGS")), &args); err != nil {
			fmt.Fprintln(os.Stderr, "bad REKEY_KEYS_ARGS:", err)
			os.Exit(99)
		}
		os.Exit(mainExit(args, os.Stdout, os.Stderr))
	case "fixture":
		if err := keysFixture(os.Getenv("REKEY_KEYS_DIR")); err != nil {
			fmt.Fprintln(os.Stderr, "fixture:", err)
			os.Exit(99)
		}
		os.Exit(0)
	}
}

// keysFixture fills the token csrc (and a clashing key on cdst), and signs
// keysMsg with each signing key as the old HSM would have: the signatures
// are what export-public's keys must verify.
func keysFixture(dir string) error {
	err := softhsm.CreateObjects("csrc", keysPIN, []softhsm.ObjectSpec{
		{Label: "aes-x", Kind: "aes", Extractable: true, Encrypt: true},
		{Label: "aes-n", Kind: "aes", Encrypt: true},
		{Label: "gen-x", Kind: "generic", Extractable: true, Sign: true},
		{Label: "gen-n", Kind: "generic", Sign: true},
		{Label: "rsa-x", Kind: "rsa", Extractable: true, Sign: true},
		{Label: "rsa-n", Kind: "rsa", Sign: true},
		{Label: "ec-x", Kind: "ec", Extractable: true, Sign: true},
		{Label: "ec-n", Kind: "ec", Sign: true},
		{Label: "clash", Kind: "aes", Extractable: true, Encrypt: true},
	})
	if err != nil {
		return err
	}
	if err := softhsm.CreateObjects("cdst", keysPIN, []softhsm.ObjectSpec{{Label: "clash", Kind: "aes", Encrypt: true}}); err != nil {
		return err
	}
	for _, l := range []string{"rsa-n", "ec-n", "rsa-x"} {
		sig, err := softhsm.Sign("csrc", keysPIN, l, keysMsg)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, l+".sig"), sig, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// keysEnv is a SoftHSM store for the children.
type keysEnv struct {
	dir, conf string
	outputs   []string // everything the children printed, to check for the PIN
}

func newKeysEnv(t *testing.T) *keysEnv {
	t.Helper()
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	// Written here rather than with softhsm.Setup, which would point this
	// process's SOFTHSM2_CONF at it.
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+store+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"csrc", "cdst"} {
		if err := softhsm.InitToken(conf, tok, "so-1357", keysPIN); err != nil {
			t.Fatal(err)
		}
	}
	e := &keysEnv{dir: dir, conf: conf}
	if code, out := e.child(t, "fixture"); code != 0 {
		t.Fatalf("fixture: exit %d\n%s", code, out)
	}
	t.Cleanup(func() {
		for _, o := range e.outputs {
			if strings.Contains(o, keysPIN) {
				t.Errorf("a PIN was printed:\n%s", o)
			}
		}
	})
	return e
}

func (e *keysEnv) child(t *testing.T, mode string, args ...string) (int, string) {
	t.Helper()
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+e.conf, "REKEY_KEYS_CHILD="+mode, "REKEY_KEYS_ARGS="+string(a),
		"REKEY_KEYS_DIR="+e.dir, "REKEY_KT_PIN="+keysPIN)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	e.outputs = append(e.outputs, out.String())
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String()
}

// rekeyKeys runs "rekey keys ARGS" in a child and checks the exit code.
func (e *keysEnv) rekeyKeys(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, out := e.child(t, "cli", append([]string{"keys"}, args...)...)
	if code != want {
		t.Fatalf("rekey keys %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, out)
	}
	return out
}

const (
	ktSrc = "pkcs11:token=csrc?pin-source=env:REKEY_KT_PIN"
	ktDst = "pkcs11:token=cdst?pin-source=env:REKEY_KT_PIN"
)

func planOf(t *testing.T, e *keysEnv, args ...string) keysPlanOut {
	t.Helper()
	out := e.rekeyKeys(t, 0, append([]string{"plan", "--json"}, args...)...)
	var p keysPlanOut
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan JSON: %v\n%s", err, out)
	}
	return p
}

func planEntry(p keysPlanOut, label string) (inventory.KeyEntry, bool) {
	for _, k := range p.Keys {
		if k.Label == label {
			return k, true
		}
	}
	return inventory.KeyEntry{}, false
}

func TestKeysCLI(t *testing.T) {
	e := newKeysEnv(t)
	ledgerDir := filepath.Join(e.dir, "ledger")
	ctx := context.Background()

	// plan: table and JSON.
	table := e.rekeyKeys(t, 0, "plan", "--from", ktSrc, "--to", ktDst)
	for _, s := range []string{"LABEL", "aes-x", "transferable", "re-create", "public-only", "5 transferable, 2 re-create, 2 public-only", "transport: aes-kwp"} {
		if !strings.Contains(table, s) {
			t.Errorf("plan table lacks %q:\n%s", s, table)
		}
	}
	p := planOf(t, e, "--from", ktSrc, "--to", ktDst)
	if p.Transport != inventory.TransportAESKWP || p.Totals[inventory.Transferable] != 5 {
		t.Errorf("plan: transport %q, totals %v (want aes-kwp, 5 transferable incl. clash)", p.Transport, p.Totals)
	}

	// copy: the transferable keys move, the clash is reported (exit 3).
	out := e.rekeyKeys(t, exitFailures, "copy", "--from", ktSrc, "--to", ktDst, "--ledger", ledgerDir, "--run-id", "c1")
	if !strings.Contains(out, "label clash") || !strings.Contains(out, "4 migrated") {
		t.Errorf("copy output:\n%s", out)
	}
	rows, err := ledger.Read(ctx, ledgerDir, "c1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"aes-x": schemas.StatusMigrated, "gen-x": schemas.StatusMigrated, "rsa-x": schemas.StatusMigrated,
		"ec-x": schemas.StatusMigrated, "clash": schemas.StatusFailed, "aes-n": schemas.StatusSkipped, "gen-n": schemas.StatusSkipped,
		"rsa-n": schemas.StatusSkipped, "ec-n": schemas.StatusSkipped}
	checkRows := func(run string, rows []schemas.LedgerRow, migratedBecomes string) map[string]string {
		sums := map[string]string{}
		if len(rows) != len(want) {
			t.Errorf("run %s: %d ledger rows, want %d", run, len(rows), len(want))
		}
		for _, r := range rows {
			label := r.Source[strings.Index(r.Source, "object=")+7:]
			label = label[:strings.IndexByte(label, ';')]
			w := want[label]
			if w == schemas.StatusMigrated {
				w = migratedBecomes
			}
			if r.Unit != schemas.UnitKey || r.Status != w || r.RunID != run {
				t.Errorf("run %s, %s: unit %s status %s (%s), want key %s", run, label, r.Unit, r.Status, r.Error, w)
			}
			if want[label] == schemas.StatusMigrated && r.Checksum == "" {
				t.Errorf("run %s, %s: no check value in the ledger", run, label)
			}
			sums[label] = r.Checksum
		}
		return sums
	}
	first := checkRows("c1", rows, schemas.StatusMigrated)
	var m keysManifest
	b, err := os.ReadFile(ledger.ManifestPath(ledgerDir, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Keys.Migrated != 4 || m.Keys.Failed != 1 || m.Keys.Recreate != 2 || m.Keys.PublicOnly != 2 ||
		m.Status != "completed_with_failures" || m.Totals.LedgerRows != 9 || strings.Contains(string(b), "pin-source") {
		t.Errorf("manifest %v: %s", err, b)
	}

	// The copies on the target: same id and usage, sensitive, not
	// extractable.
	dp := planOf(t, e, "--from", ktDst)
	sp := planOf(t, e, "--from", ktSrc)
	for _, l := range []string{"aes-x", "gen-x", "rsa-x", "ec-x"} {
		d, ok := planEntry(dp, l)
		s, _ := planEntry(sp, l)
		if !ok || d.ID != s.ID || d.Kind != s.Kind || strings.Join(d.Usage, ",") != strings.Join(s.Usage, ",") || d.Extractable || !d.Sensitive {
			t.Errorf("%s on the target: %+v (source %+v)", l, d, s)
		}
	}

	// A rerun moves nothing: the copies are skipped with the same check
	// values, the clash is still reported.
	e.rekeyKeys(t, exitFailures, "copy", "--from", ktSrc, "--to", ktDst, "--ledger", ledgerDir, "--run-id", "c2")
	rows2, err := ledger.Read(ctx, ledgerDir, "c2")
	if err != nil {
		t.Fatal(err)
	}
	second := checkRows("c2", rows2, schemas.StatusSkipped)
	for l, w := range want {
		if w == schemas.StatusMigrated && second[l] != first[l] {
			t.Errorf("%s: check value %s on rerun, %s first", l, second[l], first[l])
		}
	}
	if n := len(planOf(t, e, "--from", ktDst).Keys); n != len(dp.Keys) {
		t.Errorf("rerun changed the target: %d entries, was %d", n, len(dp.Keys))
	}
	// A run id is never reused.
	e.rekeyKeys(t, exitUsage, "copy", "--from", ktSrc, "--to", ktDst, "--ledger", ledgerDir, "--run-id", "c1")

	// export-public with successors.
	pub := filepath.Join(e.dir, "public")
	out = e.rekeyKeys(t, 0, "export-public", "--from", ktSrc, "--out", pub, "--ledger", ledgerDir, "--run-id", "x1", "--create-successor", "-2026", "--to", ktDst)
	var index []keysExportEntry
	b, err = os.ReadFile(filepath.Join(pub, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &index); err != nil {
		t.Fatal(err)
	}
	byLabel := map[string]keysExportEntry{}
	for _, ix := range index {
		byLabel[ix.Label] = ix
	}
	for _, l := range []string{"rsa-n", "ec-n", "rsa-x", "ec-x"} {
		ix, ok := byLabel[l]
		if !ok || ix.Error != "" || ix.Fingerprint == "" {
			t.Fatalf("%s not exported: %+v\n%s", l, ix, out)
		}
		pemText, err := os.ReadFile(filepath.Join(pub, ix.PEM))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"Label: " + l, "ID: " + ix.ID, "Algorithm: " + ix.Algorithm, "Fingerprint: " + ix.Fingerprint, "-----BEGIN PUBLIC KEY-----"} {
			if !bytes.Contains(pemText, []byte(s)) {
				t.Errorf("%s: PEM lacks %q", l, s)
			}
		}
		var jwk map[string]any
		if jb, err := os.ReadFile(filepath.Join(pub, ix.JWK)); err != nil || json.Unmarshal(jb, &jwk) != nil || jwk["label"] != l || jwk["kid"] != ix.KeyID || jwk["fingerprint"] != ix.Fingerprint {
			t.Errorf("%s: JWK %v %v", l, jwk, err)
		}
	}
	for _, l := range []string{"rsa-n", "ec-n"} {
		s := byLabel[l].Successor
		if s == nil || !s.Created || s.Label != l+"-2026" || s.Fingerprint == "" || s.Fingerprint == byLabel[l].Fingerprint {
			t.Errorf("%s: successor %+v", l, s)
		}
		d, ok := planEntry(planOf(t, e, "--from", ktDst), l+"-2026")
		if !ok || d.Extractable || !d.Sensitive || d.Kind != inventory.KindKeyPair {
			t.Errorf("successor %s-2026 on the target: %+v", l, d)
		}
	}
	if s := byLabel["rsa-x"].Successor; s != nil {
		t.Errorf("a transferable pair got a successor: %+v", s)
	}
	xrows, err := ledger.Read(ctx, ledgerDir, "x1")
	if err != nil {
		t.Fatal(err)
	}
	paired := 0
	for _, r := range xrows {
		if r.Unit != schemas.UnitKey || r.Status != schemas.StatusMigrated || !strings.HasPrefix(r.Checksum, "sha256:") {
			t.Errorf("export ledger row %+v", r)
		}
		if strings.Contains(r.TargetKEK, "-2026") {
			paired++
		}
	}
	if len(xrows) != 4 || paired != 2 {
		t.Errorf("export ledger: %d rows, %d pairings; want 4 and 2", len(xrows), paired)
	}
	// Again: the successors exist, they are reported, not made twice.
	e.rekeyKeys(t, 0, "export-public", "--from", ktSrc, "--out", pub, "--ledger", ledgerDir, "--run-id", "x2", "--create-successor", "-2026", "--to", ktDst)
	if b, _ := os.ReadFile(filepath.Join(pub, "index.json")); bytes.Count(b, []byte(`"created": false`)) != 2 {
		t.Errorf("second export, index:\n%s", b)
	}

	// The old signatures verify with the exported keys, checked by openssl.
	t.Run("openssl", func(t *testing.T) {
		openssl, err := exec.LookPath("openssl")
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("openssl not on PATH (CI is set, so a missing tool fails)")
			}
			t.Skip("openssl not on PATH")
		}
		msg := filepath.Join(e.dir, "msg")
		if err := os.WriteFile(msg, keysMsg, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"rsa-n", "ec-n", "rsa-x"} {
			key := filepath.Join(pub, byLabel[l].PEM)
			cmd := exec.Command(openssl, "dgst", "-sha256", "-verify", key, "-signature", filepath.Join(e.dir, l+".sig"), msg)
			if o, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(o), "Verified OK") {
				t.Errorf("openssl verify with %s: %v\n%s", key, err, o)
			}
			// A signature of other data must not verify (the check is real).
			other := filepath.Join(e.dir, "other")
			_ = os.WriteFile(other, []byte("tampered\n"), 0o600)
			if o, err := exec.Command(openssl, "dgst", "-sha256", "-verify", key, "-signature", filepath.Join(e.dir, l+".sig"), other).CombinedOutput(); err == nil {
				t.Errorf("openssl verified a signature of other data with %s:\n%s", key, o)
			}
			der, err := exec.Command(openssl, "pkey", "-pubin", "-in", key, "-outform", "DER").Output()
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(der)
			if fp := "sha256:" + hex.EncodeToString(sum[:]); fp != byLabel[l].Fingerprint {
				t.Errorf("%s: openssl's fingerprint %s, index %s", l, fp, byLabel[l].Fingerprint)
			}
		}
	})
}

func TestKeysCLIErrors(t *testing.T) {
	e := newKeysEnv(t)
	ledgerDir := filepath.Join(e.dir, "ledger")
	for _, tc := range []struct {
		name    string
		code    int
		args    []string
		mention []string
	}{
		{"no subcommand", exitUsage, nil, []string{"plan, copy or export-public"}},
		{"no --from", exitUsage, []string{"plan"}, []string{"--from is required"}},
		{"copy without --ledger", exitUsage, []string{"copy", "--from", ktSrc, "--to", ktDst}, []string{"--ledger is required"}},
		{"unknown token", exitFatal, []string{"plan", "--from", "pkcs11:token=nope?pin-source=env:REKEY_KT_PIN"}, []string{`"nope"`, "softhsm2-util --show-slots"}},
		{"pin on the command line", exitFatal, []string{"plan", "--from", "pkcs11:token=csrc?pin-value=" + keysPIN}, []string{"pin-source"}},
		{"same token", exitFatal, []string{"copy", "--from", ktSrc, "--to", ktSrc, "--ledger", ledgerDir}, []string{"same token"}},
		{"successor without --to", exitUsage, []string{"export-public", "--from", ktSrc, "--out", e.dir, "--ledger", ledgerDir, "--create-successor", "-x"}, []string{"needs --to"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := e.child(t, "cli", append([]string{"keys"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, out)
			}
			for _, s := range tc.mention {
				if !strings.Contains(out, s) {
					t.Errorf("output does not mention %q:\n%s", s, out)
				}
			}
		})
	}
}
