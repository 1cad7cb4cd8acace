package pipeline_test

import (
	"context"
	"strings"
	"testing"

	"rekey/pipeline"
	"rekey/providers/awskms/localkms"
	"rekey/providers/keys"
	"rekey/schemas"
)

// planLoad runs Plan, requires every check to pass, and returns the
// report.
func planLoad(t *testing.T, j *pipeline.Job) *pipeline.Report {
	t.Helper()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	r := pipeline.Plan(context.Background(), j, true)
	if r.Failed() {
		t.Fatalf("plan failed: %+v", r.Checks)
	}
	t.Logf("HSM operations: about %d (%s)", r.HSMOps, r.HSMOpsNote)
	return r
}

func wantLoad(t *testing.T, got pipeline.CustodianLoad, side string, calls int64, rate float64, minutes string) {
	t.Helper()
	if got.Side != side || got.Calls != calls || got.Rate != rate || (minutes != "" && !strings.Contains(got.String(), minutes)) {
		t.Fatalf("load %q: side %q, %d calls at %g/s; want %q, %d calls at %g/s, %q", got.String(), got.Side, got.Calls, got.Rate, side, calls, rate, minutes)
	}
}

// TestPlanKMSEstimate (issue 12): rekey plan expresses the HSM-operation
// estimate per custodian in API calls and in minutes at the custodian's
// rate — the job's hsm_rate, else the scheme's default (a KMS's published
// quota), "unlimited" for a PKCS#11 token without one.
func TestPlanKMSEstimate(t *testing.T) {
	t.Run("pkcs11-to-ibmkp", func(t *testing.T) {
		// 3000 DEKs into Key Protect (FAKE) at its default 50/s: a wrap and a
		// verifying unwrap each, 6000 calls, 2 minutes.
		ibm := newIBMRunbook(t)
		d := genSharded(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 10, 3000, 0)
		j := d.job(schemas.ModeRewrap, "plan-ibm", ibm.ref(ibm.prod, ibm.prodKey), "")
		r := planLoad(t, j)
		if len(r.Load) != 2 {
			t.Fatalf("load %v", r.Load)
		}
		wantLoad(t, r.Load[0], "source", 3000, 0, "rate unlimited")
		wantLoad(t, r.Load[1], "target", 6000, 50, "2.0 minutes at 50/s (the ibmkp default")
		if !strings.Contains(r.HSMOpsNote, "6000 API calls") || !strings.Contains(r.HSMOpsNote, "at these rates the run takes at least 2.0 minutes") {
			t.Fatalf("note: %s", r.HSMOpsNote)
		}
		if r.HSMOps != 9000 {
			t.Fatalf("HSM operations %d, want 9000", r.HSMOps)
		}
		// hsm_rate overrides the default, for both custodians.
		j.HSMRate = 25
		r = planLoad(t, j)
		wantLoad(t, r.Load[0], "source", 3000, 25, "2.0 minutes at 25/s (hsm_rate)")
		wantLoad(t, r.Load[1], "target", 6000, 25, "4.0 minutes at 25/s (hsm_rate)")
		// A side's own rate overrides hsm_rate for its custodian only
		// (issue 12: overridable per custodian), in the estimate and in the
		// budget the custodian's calls wait for.
		j.Target.HSMRate = 10
		r = planLoad(t, j)
		wantLoad(t, r.Load[0], "source", 3000, 25, "2.0 minutes at 25/s (hsm_rate)")
		wantLoad(t, r.Load[1], "target", 6000, 10, "10.0 minutes at 10/s (target.hsm_rate)")
		spec := j.Spec()
		if spec.RateFor(j.Target.KEK) != 10 || spec.RateFor(j.Source.KEK) != 25 || j.VerifySpec("").HSMRate != 10 {
			t.Fatalf("rates: source %g, target %g, verify %g; want 25, 10, 10", spec.RateFor(j.Source.KEK), spec.RateFor(j.Target.KEK), j.VerifySpec("").HSMRate)
		}
		if lim := keys.BudgetOf(keys.Custodian(mustOpen(t, j.Target.KEK))); lim == nil || float64(lim.Limit()) != 10 {
			t.Fatalf("the target custodian's budget after the plan is %v, want target.hsm_rate 10/s", lim)
		}
		j.HSMRate, j.Target.HSMRate, j.Source.HSMRate = 0, 0, 40
		r = planLoad(t, j)
		wantLoad(t, r.Load[0], "source", 3000, 40, "(source.hsm_rate)")
		wantLoad(t, r.Load[1], "target", 6000, 50, "(the ibmkp default")
	})
	t.Run("awskms-inside", func(t *testing.T) {
		// One AWS KMS: ReEncrypt and a verifying Decrypt per DEK, on one
		// budget, at the default 10,000/s.
		kms := localkms.Start(t)
		d := genSharded(t, kms.KeyURI(localkms.Key1), "", 1, 10, 20, 0)
		j := d.job(schemas.ModeRewrap, "plan-aws", kms.KeyURI(localkms.Key2), "")
		r := planLoad(t, j)
		if len(r.Load) != 1 {
			t.Fatalf("load %v", r.Load)
		}
		wantLoad(t, r.Load[0], "source and target", 40, keys.DefaultRate(mustOpen(t, j.Target.KEK)), "under 0.01 minutes at 10000/s (the awskms default")
		if !strings.Contains(r.Load[0].Per, "rewrap inside the custodian") || r.HSMOps != 40 ||
			!strings.HasPrefix(r.HSMOpsNote, "per DEK the source custodian rewraps inside (20 DEKs): 1 rewrap there and at most 1 target unwrap to verify;") {
			t.Fatalf("%d HSM operations (%s); per custodian: %s", r.HSMOps, r.HSMOpsNote, r.Load[0].Per)
		}
		// The custodian's own checks (keys.Preflighter) are in the plan.
		creds := 0
		for _, c := range r.Checks {
			if strings.HasPrefix(c.Name, "AWS credentials for ") && c.OK {
				creds++
			}
		}
		if creds != 2 {
			t.Fatalf("the plan holds %d AWS credential checks, want one per key: %+v", creds, r.Checks)
		}
	})
	t.Run("awskms-to-pkcs11-reencrypt", func(t *testing.T) {
		kms := localkms.Start(t)
		d := genSharded(t, kms.KeyURI(localkms.Key1), "", 2, 10, 6, 0)
		j := d.job(schemas.ModeReencrypt, "plan-re", env.KEK("target", "kek-aes"), "aes-kwp")
		j.HSMRate = 2
		r := planLoad(t, j)
		if len(r.Load) != 2 {
			t.Fatalf("load %v", r.Load)
		}
		wantLoad(t, r.Load[0], "source", 6, 2, "0.05 minutes at 2/s (hsm_rate)")
		// Random from the token, a wrap and a verifying unwrap per new DEK.
		wantLoad(t, r.Load[1], "target", 18, 2, "0.15 minutes at 2/s (hsm_rate)")
		if r.HSMOps != 24 || !strings.Contains(r.HSMOpsNote, "at these rates the run takes at least 0.15 minutes") {
			t.Fatalf("%d HSM operations (%s)", r.HSMOps, r.HSMOpsNote)
		}
	})
}
