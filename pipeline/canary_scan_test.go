package pipeline_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rekey/providers/keys"
	"rekey/transforms"
)

// canaryForms is every form a leaked secret could take in a file or in
// output: raw, hex in both cases, base64 in its four alphabets.
func canaryForms(b []byte) [][]byte {
	return [][]byte{b, []byte(hex.EncodeToString(b)), []byte(strings.ToUpper(hex.EncodeToString(b))),
		[]byte(base64.StdEncoding.EncodeToString(b)), []byte(base64.RawStdEncoding.EncodeToString(b)),
		[]byte(base64.URLEncoding.EncodeToString(b)), []byte(base64.RawURLEncoding.EncodeToString(b))}
}

// canaryNeedles is what a canary test must not find: the marker every
// plaintext starts with, both PINs (an empty PIN fails the test: the scan
// would see nothing) and every DEK.
func canaryNeedles(t *testing.T, marker string, secrets [][]byte) map[string][]byte {
	t.Helper()
	needles := map[string][]byte{"marker": []byte(marker)}
	for _, v := range []string{"REKEY_SOURCE_PIN", "REKEY_TARGET_PIN"} {
		pin := os.Getenv(v)
		if pin == "" {
			t.Fatalf("%s is empty: the PIN scan would see nothing", v)
		}
		needles[v] = []byte(pin)
	}
	for i, s := range secrets {
		needles[fmt.Sprintf("DEK #%d", i)] = s
	}
	return needles
}

// canaryScan reports every needle found in b, in any of its forms.
func canaryScan(t *testing.T, needles map[string][]byte, what string, b []byte) {
	t.Helper()
	for name, n := range needles {
		for _, f := range canaryForms(n) {
			if len(f) > 0 && bytes.Contains(b, f) {
				t.Errorf("%s found in %s", name, what)
			}
		}
	}
}

// canaryScanTree scans every file under root but those in the top-level
// folders skip names, and counts them by top-level folder and extension
// ("rw/.parquet").
func canaryScanTree(t *testing.T, needles map[string][]byte, root string, skip ...string) (files int, kinds map[string]int) {
	t.Helper()
	kinds = map[string]int{}
	_ = filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		top := strings.SplitN(rel, string(filepath.Separator), 2)[0]
		for _, s := range skip {
			if top == s {
				return nil
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files++
		kinds[top+"/"+filepath.Ext(p)]++
		canaryScan(t, needles, rel, b)
		return nil
	})
	return files, kinds
}

// canaryTableDEKs is every DEK of a rekey DEK table folder, unwrapped by
// kekURI.
func canaryTableDEKs(t *testing.T, dir, kekURI string) [][]byte {
	t.Helper()
	ctx := context.Background()
	k, err := keys.Open(ctx, kekURI, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := transforms.ReadDEKTable(ctx, dir)
	if err != nil || len(rows) == 0 {
		t.Fatalf("%s: %d rows, %v", dir, len(rows), err)
	}
	var out [][]byte
	for _, r := range rows {
		dek, err := k.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(dek.Bytes()))
		dek.Zero()
	}
	return out
}
