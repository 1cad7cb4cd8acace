package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"rekey/hsmio/faultpkcs11"
)

// TestStoppedRunShowsItsCause (issue 15 item 5): a run stopped by a
// custodian that stays down (every C_Decrypt after the preflight's answers
// CKR_DEVICE_ERROR) prints its root cause in one line: what failed, which
// key, the HSM's answer, and what to do; not Beam's plan line or an empty
// "DoFn failed".
func TestStoppedRunShowsItsCause(t *testing.T) {
	dir := t.TempDir()
	src, dst := env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes")
	rekey(t, exitOK, "gen", "--deks", dir+"/src/deks", "--kek", src, "--num-deks", "200", "--files", "0")
	lib := faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Rate: 1, After: 4, Code: "CKR_DEVICE_ERROR"})
	faulty := fmt.Sprintf("pkcs11:token=source;object=kek-aes?module-path=%s&pin-source=env:REKEY_SOURCE_PIN", lib)
	resetFlags()
	var stdout, stderr bytes.Buffer
	code := mainExit([]string{"run", "--mode", "rewrap", "--run-id", "c1", "--source-deks", dir + "/src/deks", "--source-kek", faulty,
		"--target-deks", dir + "/dst/deks", "--target-kek", dst, "--ledger", dir + "/ledger", "--progress", "-1s"}, &stdout, &stderr)
	out := stdout.String() + stderr.String()
	if code != exitFatal {
		t.Fatalf("exit %d, want %d:\n%s", code, exitFatal, out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "rekey run: run c1 stopped:") {
			line = l
		}
	}
	for _, want := range []string{"CKR_DEVICE_ERROR", "unwrap", "token=source", "kek-aes"} {
		if !strings.Contains(line, want) {
			t.Errorf("the stop line lacks %q:\n%s\n(all output:\n%s)", want, line, out)
		}
	}
	for _, bad := range []string{"ParDo[", "DoFn[", "failed:\n"} {
		if strings.Contains(line, bad) {
			t.Errorf("the stop line shows Beam's plumbing %q: %s", bad, line)
		}
	}
	if !strings.Contains(out, "--resume") {
		t.Errorf("no resume hint:\n%s", out)
	}
}
