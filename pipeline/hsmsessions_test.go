package pipeline_test

// Lost HSM sessions during a run (issue 15, item 2), through rekey's
// fault-injecting PKCS#11 module (hsmio/faultpkcs11) wrapping SoftHSM2:
// sessions the HSM drops are replaced on every path, and the run succeeds.

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"rekey/hsmio/faultpkcs11"
	"rekey/pipeline"
	"rekey/schemas"
)

// faultKEKOn is a key of token ("source" or "target") reached through a
// copy of the fault module configured with c.
func faultKEKOn(t *testing.T, token, object string, c faultpkcs11.Config) string {
	t.Helper()
	pin := map[string]string{"source": "REKEY_SOURCE_PIN", "target": "REKEY_TARGET_PIN"}[token]
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=env:%s", token, object, faultpkcs11.ForTest(t, c), pin)
}

// TestDroppedHSMSessionsDoNotStopTheRun: a preflight, then 200-DEK rewraps (AES-GCM unwrap
// on the source, wrap on the target) and a reencrypt (also HSM random on
// the target) with --workers 8, during which the HSM drops two
// sessions far apart (the second dropped call of each is the 80th and
// 160th of its kind), with each code a lost session shows: every run
// succeeds with nothing failed.
func TestDroppedHSMSessionsDoNotStopTheRun(t *testing.T) {
	for _, tc := range []struct {
		name, mode, code string
		source, target   []string // calls dropped on each side
	}{
		{"rewrap/session-handle-invalid", schemas.ModeRewrap, faultpkcs11.SessionHandleInvalid, []string{"C_Decrypt"}, nil},
		{"rewrap/session-closed", schemas.ModeRewrap, faultpkcs11.SessionClosed, nil, []string{"C_Encrypt"}},
		{"rewrap/device-removed", schemas.ModeRewrap, faultpkcs11.DeviceRemoved, []string{"C_Decrypt"}, []string{"C_Encrypt"}},
		// (reencrypt's source DEKs come from the process cache, warm from
		// generating the dataset: only the target is disturbed.)
		{"reencrypt/token-not-present", schemas.ModeReencrypt, faultpkcs11.TokenNotPresent, nil, []string{"C_GenerateRandom", "C_Encrypt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const deks = 200
			d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 100, deks)
			j := d.job(tc.mode, "drops", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
			j.Workers = 8
			var logs []string
			drop := func(token string, calls []string) string {
				log := filepath.Join(t.TempDir(), token+".log")
				logs = append(logs, log)
				// Every 80th eligible call, twice: C_Encrypt and C_Decrypt
				// are two calls each (length, then data), so the drops
				// are about 40 operations apart.
				return faultKEKOn(t, token, "kek-aes", faultpkcs11.Config{Calls: calls, Mode: faultpkcs11.Drop, Code: tc.code, Every: 80, Max: 2, Log: log})
			}
			if tc.source != nil {
				j.Source.KEK = drop("source", tc.source)
			}
			if tc.target != nil {
				j.Target.KEK = drop("target", tc.target)
			}
			// As rekey run does: the preflight first (it opens the keys
			// that the run's workers then share), then the run.
			if r := pipeline.Plan(context.Background(), j, false); r.Failed() {
				t.Fatalf("preflight: %+v", r.Checks)
			}
			m := runJob(t, j)
			for _, log := range logs {
				if lines, _ := faultpkcs11.Logged(log); len(lines) != 2 {
					t.Fatalf("%s: %d sessions dropped, want 2: %v", filepath.Base(log), len(lines), lines)
				}
			}
			if m.Status != "succeeded" || m.Totals.DEKsMigrated != deks || m.Totals.Failed != 0 {
				t.Fatalf("run with dropped sessions: %s %+v %v", m.Status, m.Totals, m.Failures)
			}
		})
	}
}

// TestLowSessionLimitCapsWorkers (issue 15 item 4): a target token that
// allows 4 sessions, and a reencrypt with --workers 8 (HSM random, AES-GCM
// wraps and their verify unwraps on the target): the preflight says the
// workers were capped and by what, and the run succeeds, its extra
// workers waiting for a session instead of failing.
func TestLowSessionLimitCapsWorkers(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 100, 50)
	j := d.job(schemas.ModeReencrypt, "capped", faultKEKOn(t, "target", "kek-aes", faultpkcs11.Config{MaxSessions: 4}), schemas.WrapAESGCM)
	j.Workers = 8
	r := pipeline.Plan(context.Background(), j, false)
	if r.Failed() {
		t.Fatalf("preflight: %+v", r.Checks)
	}
	capped := false
	for _, c := range r.Checks {
		capped = capped || c.Warn && strings.Contains(c.Info, "workers capped to") && strings.Contains(c.Info, "session limit 4")
	}
	if !capped {
		t.Fatalf("the preflight does not say the workers were capped: %+v", r.Checks)
	}
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != 200 || m.Totals.Failed != 0 {
		t.Fatalf("run on a 4-session token: %s %+v %v", m.Status, m.Totals, m.Failures)
	}
}

// TestPlanRetriesTransientHSMErrors (issue 15, item 3): the preflight's
// own key operations are retried like the run's. Every second C_Decrypt
// of the source token fails with CKR_DEVICE_ERROR (transient): the key
// check's round trip, the test unwrap of a real DEK and the sampled cells
// each meet a failure, and the plan still passes with no warning, for a
// reencrypt (cells sampled) and a rewrap (test unwrap).
func TestPlanRetriesTransientHSMErrors(t *testing.T) {
	for _, mode := range []string{schemas.ModeReencrypt, schemas.ModeRewrap} {
		t.Run(mode, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 20, 4)
			j := d.job(mode, "flaky-plan", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
			log := filepath.Join(t.TempDir(), "faults.log")
			j.Source.KEK = faultKEKOn(t, "source", "kek-aes", faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Every: 2, Log: log})
			r := pipeline.Plan(context.Background(), j, false)
			if r.Failed() {
				t.Fatalf("one transient fault per operation refused the plan: %+v", r.Checks)
			}
			for _, c := range r.Checks {
				if c.Warn {
					t.Errorf("warning under transient faults: %+v", c)
				}
			}
			lines, _ := faultpkcs11.Logged(log)
			if len(lines) < 2 {
				t.Fatalf("%d faults injected, want at least 2 (the test proves nothing): %v", len(lines), lines)
			}
			tested := false
			for _, c := range r.Checks {
				tested = tested || (c.Name == "test unwrap" || c.Name == "cell samples") && c.OK
			}
			if !tested {
				t.Fatalf("no test unwrap or sample check ran: %+v", r.Checks)
			}
		})
	}
}
