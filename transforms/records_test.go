package transforms

import (
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	fmtpkg "rekey/schemas/format"
)

// TestTargetTagColumnLayout: a target format that keeps its tags in a
// column (aes-gcm tag_column) writes them into that column of the file:
// it must be there, flat BYTE_ARRAY and not one of rekey's own; the error
// names the option and what to do.
func TestTargetTagColumnLayout(t *testing.T) {
	spec := &Spec{Encrypted: []string{"email"}, DEKColumn: "dek_id", IDColumn: "id"}
	src, err := fmtpkg.New("rekey-v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	schema := func(g parquet.Group) *parquet.Schema { return parquet.NewSchema("r", g) }
	base := parquet.Group{"id": parquet.Int(64), "dek_id": parquet.String(), "email": parquet.Leaf(parquet.ByteArrayType)}
	with := func(name string, n parquet.Node) parquet.Group {
		g := parquet.Group{}
		for k, v := range base {
			g[k] = v
		}
		g[name] = n
		return g
	}
	for _, tc := range []struct {
		name, tagCol string
		s            *parquet.Schema
		want         string // "" : accepted
	}{
		{"there", "email_tag", schema(with("email_tag", parquet.Optional(parquet.String()))), ""},
		{"missing", "email_tag", schema(base), "no such column"},
		{"int", "email_tag", schema(with("email_tag", parquet.Int(64))), "flat BYTE_ARRAY"},
		{"the cell", "email", schema(base), "encrypted, record id or key column"},
	} {
		tf, err := fmtpkg.New("aes-gcm", map[string]string{"tag_column": tc.tagCol, "encoding": "base64"})
		if err != nil {
			t.Fatal(err)
		}
		l, err := layoutFor(tc.s, spec, src, tf)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want == "" && (l.ttag < 0 || l.ttagDef != 1 || len(l.tneedsNull) != 1 || !l.tneedsNull[l.ttagField]):
			t.Errorf("%s: layout %+v", tc.name, l)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "tag_column")):
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}
