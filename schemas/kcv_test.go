package schemas_test

import (
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
)

// TestKCVKnownAnswers checks KCV against vectors computed from the
// definition in docs/FORMAT.md by testdata/kcv/gen.go, which does not use
// this package.
func TestKCVKnownAnswers(t *testing.T) {
	b, err := os.ReadFile("testdata/kcv/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []struct {
		DEK   string `json:"dek"`
		DEKID string `json:"dek_id"`
		KCV   string `json:"kcv"`
	}
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 5 {
		t.Fatalf("only %d vectors", len(vs))
	}
	for _, v := range vs {
		dek, _ := hex.DecodeString(v.DEK)
		want, _ := hex.DecodeString(v.KCV)
		got := schemas.KCV(dek, v.DEKID)
		if !bytes.Equal(got, want) || len(got) != schemas.KCVSize {
			t.Errorf("KCV(%s, %q) = %x, want %s", v.DEK[:8]+"...", v.DEKID, got, v.KCV)
		}
		if err := schemas.CheckKCV(dek, v.DEKID, want); err != nil {
			t.Errorf("CheckKCV(%q): %v", v.DEKID, err)
		}
	}
}

func TestCheckKCVRefusesWrongKeys(t *testing.T) {
	dek := bytes.Repeat([]byte{7}, schemas.DEKSize)
	kcv := schemas.KCV(dek, "dek-1")
	if err := schemas.CheckKCV(dek, "dek-1", kcv); err != nil {
		t.Fatal(err)
	}
	// Any one flipped bit of the key is caught (what a faulty HSM returns).
	for i := 0; i < len(dek)*8; i++ {
		bad := bytes.Clone(dek)
		bad[i/8] ^= 1 << (i % 8)
		if err := schemas.CheckKCV(bad, "dek-1", kcv); !errors.Is(err, schemas.ErrKCVMismatch) {
			t.Fatalf("key with bit %d flipped passed the check: %v", i, err)
		}
	}
	// The dek_id is bound: a KCV copied to another row does not check, and
	// one key under two ids shows two KCVs.
	if err := schemas.CheckKCV(dek, "dek-2", kcv); !errors.Is(err, schemas.ErrKCVMismatch) {
		t.Fatalf("KCV checked under another dek_id: %v", err)
	}
	if bytes.Equal(schemas.KCV(dek, "dek-2"), kcv) {
		t.Fatal("same KCV for two dek_ids")
	}
	for _, l := range []int{0, 4, 9, 32} {
		if err := schemas.CheckKCV(dek, "dek-1", make([]byte, l)); !errors.Is(err, schemas.ErrKCVMismatch) {
			t.Fatalf("%d-byte kcv accepted: %v", l, err)
		}
	}
	// Not the classic KCV: AES-ECB of a zero block is GCM's hash subkey H,
	// which must never be published.
	block, _ := aes.NewCipher(dek)
	h := make([]byte, 16)
	block.Encrypt(h, h)
	if bytes.Equal(kcv, h[:schemas.KCVSize]) {
		t.Fatal("KCV leaks the GCM hash subkey")
	}
	// The caller's key is not modified.
	if !bytes.Equal(dek, bytes.Repeat([]byte{7}, schemas.DEKSize)) {
		t.Fatal("KCV modified the key")
	}
}

func TestDEKRowValidateKCV(t *testing.T) {
	r := schemas.DEKRow{DEKID: "d", KEK: "pkcs11:token=t;object=k", Wrap: "aes-gcm", Wrapped: []byte{1}}
	for _, l := range []int{0, schemas.KCVSize} {
		r.KCV = make([]byte, l)
		if err := r.Validate(); err != nil {
			t.Errorf("%d-byte kcv: %v", l, err)
		}
	}
	for _, l := range []int{1, 7, 9, 32} {
		r.KCV = make([]byte, l)
		if err := r.Validate(); !errors.Is(err, schemas.ErrBadDEKRow) {
			t.Errorf("%d-byte kcv: got %v", l, err)
		}
	}
}

// Tables and ledgers written before the kcv and proof columns existed
// still read: the new columns read as empty.
func TestOldFilesWithoutNewColumnsRead(t *testing.T) {
	type oldDEKRow struct {
		DEKID   string    `parquet:"dek_id"`
		KEK     string    `parquet:"kek"`
		Wrap    string    `parquet:"wrap"`
		Wrapped []byte    `parquet:"wrapped"`
		Created time.Time `parquet:"created,timestamp(microsecond)"`
	}
	var buf bytes.Buffer
	old := []oldDEKRow{{"a", "pkcs11:token=t;object=k", "aes-gcm", []byte{1, 2}, time.Unix(1, 0).UTC()}, {"b", "pkcs11:token=t;object=k", "aes-kwp", []byte{3}, time.Unix(2, 0).UTC()}}
	if err := parquet.Write(&buf, old); err != nil {
		t.Fatal(err)
	}
	r := parquet.NewGenericReader[schemas.DEKRow](bytes.NewReader(buf.Bytes()))
	rows := make([]schemas.DEKRow, 4)
	n, err := r.Read(rows)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if n != 2 || rows[0].DEKID != "a" || !bytes.Equal(rows[1].Wrapped, []byte{3}) || rows[0].KCV != nil && len(rows[0].KCV) != 0 {
		t.Fatalf("old DEK table read as %+v", rows[:n])
	}
	for i := range rows[:n] {
		if err := rows[i].Validate(); err != nil {
			t.Fatal(err)
		}
	}

	type oldLedgerRow struct {
		RunID  string    `parquet:"run_id"`
		Mode   string    `parquet:"mode"`
		Unit   string    `parquet:"unit"`
		Source string    `parquet:"source"`
		DEKID  string    `parquet:"dek_id,optional"`
		Status string    `parquet:"status"`
		Bytes  int64     `parquet:"bytes"`
		At     time.Time `parquet:"at,timestamp(microsecond)"`
	}
	buf.Reset()
	if err := parquet.Write(&buf, []oldLedgerRow{{RunID: "r", Mode: "rewrap", Unit: "dek", Source: "s", DEKID: "a", Status: "migrated", Bytes: 60, At: time.Unix(3, 0).UTC()}}); err != nil {
		t.Fatal(err)
	}
	led, err := parquet.Read[schemas.LedgerRow](bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil || len(led) != 1 || led[0].DEKID != "a" || led[0].Proof != "" || led[0].Bytes != 60 {
		t.Fatalf("old ledger part read as %+v, %v", led, err)
	}

	// And the new columns round-trip.
	buf.Reset()
	kcv := schemas.KCV(make([]byte, 32), "a")
	if err := parquet.Write(&buf, []schemas.DEKRow{{DEKID: "a", KEK: "k", Wrap: "aes-gcm", Wrapped: []byte{1}, KCV: kcv}, {DEKID: "b", KEK: "k", Wrap: "aes-gcm", Wrapped: []byte{1}}}); err != nil {
		t.Fatal(err)
	}
	back, err := parquet.Read[schemas.DEKRow](bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil || !bytes.Equal(back[0].KCV, kcv) || len(back[1].KCV) != 0 {
		t.Fatalf("kcv round trip: %+v %v", back, err)
	}
}
