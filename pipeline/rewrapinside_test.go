package pipeline_test

import (
	"bytes"
	"context"
	"testing"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// TestRewrapInsideTheToken: source and target keys on one token, both
// aes-kwp, so the token rewraps each DEK itself (hsmio's keys.Rewrapper:
// unwrap into a sensitive session object, KCV checked by HMAC inside, wrap,
// unwrap again and compare KCVs) and the DEK never enters rekey. The ledger
// says path=custodian with the kcv proof; the untouched data decrypts under
// the new table. From aes-gcm, which the token cannot unwrap into an
// object, the same job takes the rekey path.
func TestRewrapInsideTheToken(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, srcWrap, path string
	}{
		{"kwp-to-kwp", schemas.WrapAESKWP, schemas.PathCustodian},
		{"gcm-to-kwp", schemas.WrapAESGCM, schemas.PathRekey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", "kek-aes"), tc.srcWrap, 2, 40, 20)
			j := d.job(schemas.ModeRewrap, "in1", env.KEK("source", "kek-other"), schemas.WrapAESKWP)
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.DEKsMigrated != 20 || m.Totals.Failed != 0 {
				t.Fatalf("manifest: %s %+v", m.Status, m.Totals)
			}
			rows, err := ledger.Read(ctx, j.Ledger, j.RunID)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, r := range rows {
				if r.Unit != schemas.UnitDEK {
					continue
				}
				n++
				if r.Path != tc.path || r.Proof != schemas.ProofKCV || r.Status != schemas.StatusMigrated {
					t.Fatalf("ledger row of %q: path %q proof %q status %q; want path %q, proof kcv, migrated", r.DEKID, r.Path, r.Proof, r.Status, tc.path)
				}
			}
			if n != 20 {
				t.Fatalf("%d dek rows in the ledger, want 20", n)
			}
			src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
			dst := decryptAll(t, d.gen.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
			checkSameRecords(t, d, src, dst, false)
			a, _ := transforms.ReadDEKTable(ctx, d.gen.DEKs)
			b, _ := transforms.ReadDEKTable(ctx, j.Target.DEKs)
			byID := map[string]schemas.DEKRow{}
			for _, r := range a {
				byID[r.DEKID] = r
			}
			for _, r := range b {
				if s := byID[r.DEKID]; !bytes.Equal(s.KCV, r.KCV) || len(r.KCV) != schemas.KCVSize || r.Wrap != schemas.WrapAESKWP || !keys.Matches(mustOpen(t, j.Target.KEK), r.KEK) {
					t.Fatalf("target row %q: kcv %x (source %x), wrap %s, kek %s", r.DEKID, r.KCV, s.KCV, r.Wrap, r.KEK)
				}
			}
		})
	}
}

func mustOpen(t *testing.T, uri string) keys.KEK {
	t.Helper()
	k, err := keys.Open(context.Background(), uri, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return k
}
