package pipeline_test

// End-to-end runs of the KMS custodians (issue 12 "Tests"): both runbooks
// on their own custodians, mixed PKCS#11/AWS KMS runs both ways, AWS KMS
// rewrapping inside (ReEncrypt), throttling and a key revoked mid-run.
// Each run starts from the example job file of its scenario in
// jobs/examples (locations and keys replaced by the test's), and each is
// checked with rekey verify. AWS KMS is local-kms (a real emulator); IBM
// and Alibaba are FAKES (kpfake, kmsfake).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/pipeline"
	"rekey/providers/alikms/kmsfake"
	"rekey/providers/awskms/localkms"
	"rekey/providers/ibmkp"
	"rekey/providers/ibmkp/kpfake"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// exampleJob is jobs/examples/<name> with d's source, srcKEK and dstKEK as
// its keys and the run's outputs under d's root: what the example says
// about the run (mode, wrap, dek_source, hsm_rate, columns) is what runs.
func exampleJob(t *testing.T, name string, d *dataset, runID, srcKEK, dstKEK string) *pipeline.Job {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "jobs", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	j, err := pipeline.ParseJob(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	j.RunID = runID
	j.Source.Data, j.Source.DEKs, j.Source.KEK = d.gen.Data, d.gen.DEKs, srcKEK
	j.Target.DEKs, j.Target.KEK, j.Target.Data = filepath.Join(d.root, runID, "deks"), dstKEK, ""
	if j.Mode == schemas.ModeReencrypt {
		j.Target.Data = filepath.Join(d.root, runID, "data")
	}
	j.Ledger = filepath.Join(d.root, "ledger")
	j.Workers = 3
	j.Defaults()
	return j
}

// TestKMSRunbookHPCSRewrap is the HPCS runbook on its own custodian: every
// DEK is unwrapped by the beta instance's root key and wrapped by the
// production instance's (Key Protect FAKE, two instances); the data is not
// touched and decrypts under the new table.
func TestKMSRunbookHPCSRewrap(t *testing.T) {
	ibm := newIBMRunbook(t)
	d := genSharded(t, ibm.ref(ibm.beta, ibm.betaKey), "", 2, 30, 12, 5)
	j := exampleJob(t, "ibmkp-beta-to-production-rewrap.yaml", d, "hpcs", d.gen.KEK, ibm.ref(ibm.prod, ibm.prodKey))
	if j.Mode != schemas.ModeRewrap {
		t.Fatalf("example mode %q", j.Mode)
	}
	wantSucceeded(t, runJob(t, j), 12, 0)
	if got := ledgerDEKRows(t, j); got["migrated/rekey"] != 12 || len(got) != 1 {
		t.Fatalf("ledger DEK rows by status/path: %v; want 12 migrated/rekey (another instance: rekey unwraps and wraps)", got)
	}
	target, err := transforms.ReadDEKTable(context.Background(), j.Target.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	prod := mustOpen(t, j.Target.KEK)
	for _, r := range target {
		if r.Wrap != "ibm-kp" || !keys.Matches(prod, r.KEK) || strings.Contains(r.KEK, "apikey") {
			t.Fatalf("target row %q: wrap %q, kek %q", r.DEKID, r.Wrap, r.KEK)
		}
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, d.gen.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, false)
	wantVerified(t, j, 60, 12)
	if st := ibm.srv.Stats(); st.APIKeyLeaks != 0 || st.Unauthorized != 0 {
		t.Fatalf("fake's stats: %+v", st)
	}
}

// TestKMSRunbookAlibabaReencrypt is the Alibaba runbook on its own
// custodians: every record is decrypted with the old region's keys (shared
// gateway, by alias) and encrypted under fresh DEKs from the new KMS
// instance (both FAKES).
func TestKMSRunbookAlibabaReencrypt(t *testing.T) {
	ali := newAliRunbook(t)
	ali.gw.CreateAlias("alias/rekey-2019", ali.gw.CreateKey())
	dstKey := ali.inst.CreateKey()
	d := genSharded(t, ali.gatewayRef("alias/rekey-2019"), "", 3, 20, 6, 0)
	j := exampleJob(t, "alikms-gateway-to-instance-reencrypt.yaml", d, "alibaba", d.gen.KEK, ali.instanceRef(dstKey))
	if j.Mode != schemas.ModeReencrypt || j.DEKSource != "hsm" {
		t.Fatalf("example mode %q, dek_source %q", j.Mode, j.DEKSource)
	}
	wantSucceeded(t, runJob(t, j), 6, 60)
	if n := ali.inst.Calls("GenerateDataKey"); n < 6 {
		t.Fatalf("the instance made %d data keys, want one per source DEK (dek_source: hsm)", n)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	wantVerified(t, j, 60, 6)
}

// TestKMSMixedPKCS11ToAWS: DEKs of a PKCS#11 HSM (SoftHSM) rewrapped into
// AWS KMS (local-kms).
func TestKMSMixedPKCS11ToAWS(t *testing.T) {
	kms := localkms.Start(t)
	d := genSharded(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 30, 8, 4)
	j := exampleJob(t, "pkcs11-to-awskms-rewrap.yaml", d, "p11-aws", d.gen.KEK, kms.KeyURI(localkms.Key1))
	wantSucceeded(t, runJob(t, j), 8, 0)
	if got := ledgerDEKRows(t, j); got["migrated/rekey"] != 8 || len(got) != 1 {
		t.Fatalf("ledger DEK rows: %v", got)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, d.gen.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, false)
	wantVerified(t, j, 60, 8)
}

// TestKMSMixedAWSToPKCS11: a dataset whose DEKs AWS KMS wraps, re-encrypted
// under fresh DEKs of a PKCS#11 HSM.
func TestKMSMixedAWSToPKCS11(t *testing.T) {
	kms := localkms.Start(t)
	d := genSharded(t, kms.KeyURI("alias/rekey-test-1"), "", 2, 30, 5, 0)
	j := exampleJob(t, "awskms-to-pkcs11-reencrypt.yaml", d, "aws-p11", d.gen.KEK, env.KEK("target", "kek-aes"))
	wantSucceeded(t, runJob(t, j), 5, 60)
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	wantVerified(t, j, 60, 5)
}

// TestKMSRewrapInsideAWS: between two keys of one AWS KMS, every DEK is
// moved by ReEncrypt (the DEK never reaches rekey): path=custodian in the
// ledger for each.
func TestKMSRewrapInsideAWS(t *testing.T) {
	kms := localkms.Start(t)
	d := genSharded(t, kms.KeyURI(localkms.Key1), "", 2, 30, 10, 4)
	j := exampleJob(t, "awskms-key-to-key-rewrap.yaml", d, "aws-aws", d.gen.KEK, kms.KeyURI(localkms.Key2))
	wantSucceeded(t, runJob(t, j), 10, 0)
	if got := ledgerDEKRows(t, j); got["migrated/custodian"] != 10 || len(got) != 1 {
		t.Fatalf("ledger DEK rows by status/path: %v; want 10 migrated/custodian (ReEncrypt)", got)
	}
	wantVerified(t, j, 60, 10)
}

// TestKMSThrottlingIsNotFailure: 10% of the custodian's answers are
// throttling, during rewraps of 300 DEKs: the runs finish with nothing
// failed, slower. AWS KMS: local-kms's proxy answers ThrottlingException
// (ReEncrypt inside, and the verifying Decrypt). Key Protect FAKE: 429s on
// both instances (unwrap, wrap, verifying unwrap). Alibaba FAKES: 429s from
// the gateway and the instance during a reencrypt.
func TestKMSThrottlingIsNotFailure(t *testing.T) {
	t.Run("awskms", func(t *testing.T) {
		// An account of its own: the adaptive budget of a custodian is
		// process-wide, and this one is cut by design.
		kms := localkms.Start(t, localkms.Account("222233334444"))
		d := genSharded(t, kms.KeyURI(localkms.Key1), "", 1, 60, 300, 100)
		j := exampleJob(t, "awskms-key-to-key-rewrap.yaml", d, "throttled", d.gen.KEK, kms.KeyURI(localkms.Key2))
		before, _ := kms.Counts()
		kms.Throttle(0.1)
		start := time.Now()
		m := runJob(t, j)
		kms.Throttle(0)
		n, throttled := kms.Counts()
		t.Logf("%d requests, %d throttled, in %v", n-before, throttled, time.Since(start).Round(time.Millisecond))
		if throttled < 20 {
			t.Fatalf("only %d of %d requests throttled: the injection did not happen", throttled, n-before)
		}
		wantSucceeded(t, m, 300, 0)
		if got := ledgerDEKRows(t, j); got["migrated/custodian"] != 300 || len(got) != 1 {
			t.Fatalf("ledger DEK rows by status/path: %v", got)
		}
		wantVerified(t, j, 60, 300)
	})
	t.Run("ibmkp", func(t *testing.T) {
		ibm := newIBMRunbook(t)
		d := genSharded(t, ibm.ref(ibm.beta, ibm.betaKey), "", 1, 60, 300, 100)
		j := exampleJob(t, "ibmkp-beta-to-production-rewrap.yaml", d, "throttled", d.gen.KEK, ibm.ref(ibm.prod, ibm.prodKey))
		// Above the default 50/s, so the budget is what the 429s shape.
		j.HSMRate = 2000
		ibm.srv.SetFaults(kpfake.Faults{Throttle: 0.1})
		m := runJob(t, j)
		ibm.srv.SetFaults(kpfake.Faults{})
		st := ibm.srv.Stats()
		t.Logf("fake: %+v", st)
		if st.Throttled < 20 {
			t.Fatalf("only %d requests throttled", st.Throttled)
		}
		wantSucceeded(t, m, 300, 0)
		if got := ledgerDEKRows(t, j); got["migrated/rekey"] != 300 || len(got) != 1 {
			t.Fatalf("ledger DEK rows by status/path: %v", got)
		}
		wantVerified(t, j, 60, 300)
	})
	t.Run("alikms", func(t *testing.T) {
		// The Alibaba runbook (FAKES): 429 Rejected.Throttling from the
		// gateway (Decrypt) and the instance (GenerateDataKey, Encrypt,
		// the verifying Decrypt).
		ali := newAliRunbook(t)
		d := genSharded(t, ali.gatewayRef(ali.gw.CreateKey()), "", 1, 60, 300, 100)
		j := exampleJob(t, "alikms-gateway-to-instance-reencrypt.yaml", d, "throttled", d.gen.KEK, ali.instanceRef(ali.inst.CreateKey()))
		ali.gw.SetFaults(kmsfake.Faults{Throttle: 0.1})
		ali.inst.SetFaults(kmsfake.Faults{Throttle: 0.1})
		m := runJob(t, j)
		ali.gw.SetFaults(kmsfake.Faults{})
		ali.inst.SetFaults(kmsfake.Faults{})
		t.Logf("throttled: gateway %d, instance %d", ali.gw.Throttled(), ali.inst.Throttled())
		if ali.gw.Throttled() < 10 || ali.inst.Throttled() < 20 {
			t.Fatalf("throttled: gateway %d, instance %d: the injection did not happen", ali.gw.Throttled(), ali.inst.Throttled())
		}
		wantSucceeded(t, m, 300, 60)
		if got := ledgerDEKRows(t, j); got["migrated/"] != 300 || len(got) != 1 {
			t.Fatalf("ledger DEK rows by status/path: %v", got)
		}
		wantVerified(t, j, 60, 300)
	})
}

// TestKMSKeyRevokedMidRun: the production root key is suspended by the
// Key Protect FAKE once the run has made its first requests. The run
// stops with an error naming the key and the custodian, every committed
// target DEK file has its ledger part and no file is half there; with
// the key active again, --resume finishes and verifies.
// (jobs/rekey's TestCLIKMSKeyRevokedMidRun does the same with local-kms
// through the CLI: exit code and message.)
func TestKMSKeyRevokedMidRun(t *testing.T) {
	ibm := newIBMRunbook(t)
	d := genSharded(t, ibm.ref(ibm.beta, ibm.betaKey), "", 2, 30, 240, 40)
	j := exampleJob(t, "ibmkp-beta-to-production-rewrap.yaml", d, "revoked", d.gen.KEK, ibm.ref(ibm.prod, ibm.prodKey))
	j.HSMRate = 300 // slow enough to revoke mid-run: about 2.5 s in all
	j.Workers = 2
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	base := ibm.srv.Stats().Requests
	var revoked atomic.Bool
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if ibm.srv.Stats().Requests-base >= 200 {
				ibm.srv.SetState(ibm.prodKey, kpfake.Suspended)
				revoked.Store(true)
				return
			}
		}
	}()
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, j.Spec())
	_, err := beam.Run(context.Background(), "direct", p)
	close(stop)
	if !revoked.Load() {
		t.Fatalf("the run ended (%v) before the key was revoked", err)
	}
	if err == nil {
		t.Fatalf("the run finished with the key revoked: %s", jsonString(readManifest(t, j).Totals))
	}
	msg := err.Error()
	if _, cause, ok := strings.Cut(msg, "] failed:\n"); ok {
		t.Logf("the run stopped: %s", cause)
	}
	if !strings.Contains(msg, "key="+ibm.prodKey) || !strings.Contains(msg, "instance="+ibm.prod) || !strings.Contains(msg, "409") {
		t.Fatalf("the error does not name the key, its instance and the answer:\n%s", msg)
	}
	if manifestExists(j) {
		t.Fatal("a stopped run wrote a manifest")
	}
	done := committedUnits(t, j)
	t.Logf("committed before the stop: %v", done)
	if len(done) == 0 || len(done) == 6 {
		t.Fatalf("%d of 6 units committed: the key was not revoked mid-run", len(done))
	}

	ibm.srv.SetState(ibm.prodKey, kpfake.Active)
	j.Resume = true
	wantSucceeded(t, runJob(t, j), 240, 0)
	if got := committedUnits(t, j); len(got) != 6 {
		t.Fatalf("after the resume, %d of 6 units committed", len(got))
	}
	if got := ledgerDEKRows(t, j); got["migrated/rekey"] != 240 || len(got) != 1 {
		t.Fatalf("ledger DEK rows: %v", got)
	}
	wantVerified(t, j, 60, 240)
}

// TestKMSRewrapInsideIBMAfterRotation (issue 12: key versions, server-side
// rewrap): DEKs wrapped under a Key Protect root key (FAKE), the key then
// rotated. A rewrap to the same root key is Key Protect's rewrap action for
// every DEK (the DEK never leaves the service; ledger path custodian), and
// each new wrapped key is the ciphertext under the latest version: an
// unwrap of it answers no newer one. verify passes.
func TestKMSRewrapInsideIBMAfterRotation(t *testing.T) {
	ibm := newIBMRunbook(t)
	ref := ibm.ref(ibm.beta, ibm.betaKey)
	d := genSharded(t, ref, "", 1, 20, 12, 6)
	ibm.srv.Rotate(ibm.betaKey)
	j := d.job(schemas.ModeRewrap, "rotated", ref, "")
	j.Source.Data = d.gen.Data
	wantSucceeded(t, runJob(t, j), 12, 0)
	if got := ledgerDEKRows(t, j); got["migrated/custodian"] != 12 || len(got) != 1 {
		t.Fatalf("ledger DEK rows by status/path: %v; want 12 migrated/custodian (Key Protect rewrap)", got)
	}
	kek, err := keys.Open(context.Background(), ref, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kp := keys.Base(kek).(*ibmkp.KEK)
	n := 0
	err = transforms.ScanDEKTable(context.Background(), j.Target.DEKs, func(_ string, rows []schemas.DEKRow) error {
		for _, r := range rows {
			dek, latest, err := kp.UnwrapLatest(context.Background(), keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
			if err != nil || latest != nil {
				return fmt.Errorf("DEK %s after the rewrap: %v, a newer ciphertext than the one written: %v", r.DEKID, err, latest != nil)
			}
			dek.Zero()
			n++
		}
		return nil
	}, new(int))
	if err != nil || n != 12 {
		t.Fatalf("target DEK table: %d DEKs checked, %v", n, err)
	}
	wantVerified(t, j, 20, 12)
}

// TestKMSRewrapInsideAlibabaGateway (issue 12: server-side rewrap): a
// rewrap between two keys of one Alibaba Cloud KMS gateway (FAKE) is
// ReEncrypt for every DEK, with no Decrypt or Encrypt of a DEK outside
// verification; verify passes.
func TestKMSRewrapInsideAlibabaGateway(t *testing.T) {
	ali := newAliRunbook(t)
	k1, k2 := ali.gw.CreateKey(), ali.gw.CreateKey()
	d := genSharded(t, ali.gatewayRef(k1), "", 1, 20, 12, 6)
	encrypts := ali.gw.Calls("Encrypt")
	j := d.job(schemas.ModeRewrap, "gw-gw", ali.gatewayRef(k2), "")
	j.Source.Data = d.gen.Data
	wantSucceeded(t, runJob(t, j), 12, 0)
	if got := ledgerDEKRows(t, j); got["migrated/custodian"] != 12 || len(got) != 1 {
		t.Fatalf("ledger DEK rows by status/path: %v; want 12 migrated/custodian (ReEncrypt)", got)
	}
	if n := ali.gw.Calls("ReEncrypt"); n != 12 {
		t.Fatalf("%d ReEncrypt calls, want 12", n)
	}
	if n := ali.gw.Calls("Encrypt") - encrypts; n != 0 {
		t.Fatalf("%d Encrypt calls during the rewrap, want none (ReEncrypt inside the service)", n)
	}
	wantVerified(t, j, 20, 12)
}
