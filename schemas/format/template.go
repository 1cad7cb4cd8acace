package format

import (
	"fmt"
	"strings"
)

// A template renders a string from a row: literal text with {column}
// placeholders (the value of that column: integers in decimal, strings and
// binary as their bytes), {$column} for the name of the encrypted column
// being opened, and {{ and }} for literal braces.
type template struct {
	src  string
	segs []segment
}

type segment struct {
	lit   string
	field int  // index into the format's Needs, -1 for a literal
	self  bool // {$column}
}

const maxTemplate = 4096

// parseTemplate parses s, adding the columns it names to *needs.
func parseTemplate(option, s string, needs *[]string) (template, error) {
	t := template{src: s}
	if len(s) > maxTemplate {
		return t, fmt.Errorf("%s: template longer than %d bytes", option, maxTemplate)
	}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.segs = append(t.segs, segment{lit: lit.String(), field: -1})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			lit.WriteByte('{')
			i++
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return t, fmt.Errorf("%s: %q has an unclosed {", option, s)
			}
			name := s[i+1 : i+end]
			i += end
			flush()
			switch {
			case name == "$column":
				t.segs = append(t.segs, segment{field: -1, self: true})
			case name == "" || strings.HasPrefix(name, "$"):
				return t, fmt.Errorf("%s: %q: {%s} is not a column name (use {name} for a column's value, {$column} for the encrypted column's name)", option, s, name)
			default:
				idx := -1
				for k, n := range *needs {
					if n == name {
						idx = k
					}
				}
				if idx < 0 {
					*needs = append(*needs, name)
					idx = len(*needs) - 1
				}
				t.segs = append(t.segs, segment{field: idx})
			}
		case c == '}':
			return t, fmt.Errorf("%s: %q has a } without {", option, s)
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return t, nil
}

func (t *template) empty() bool { return len(t.segs) == 0 }

// appendTo renders the template for cell c.
func (t *template) appendTo(dst []byte, c *Cell) ([]byte, error) {
	for _, s := range t.segs {
		switch {
		case s.self:
			dst = append(dst, c.Column...)
		case s.field >= 0:
			if s.field >= len(c.Fields) {
				return dst, fmt.Errorf("template %q: value %d of the row is missing", t.src, s.field)
			}
			dst = append(dst, c.Fields[s.field]...)
		default:
			dst = append(dst, s.lit...)
		}
	}
	return dst, nil
}
