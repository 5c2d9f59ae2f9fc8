package contract

import (
	"bytes"
	"fmt"
	"os"
	"sync"

	"github.com/goccy/go-yaml"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Validator checks messages against the schemas of a document.
type Validator struct {
	c  *jsonschema.Compiler
	mu sync.Mutex
	by map[string]*jsonschema.Schema // compiled, by component name
}

const docURL = "file:///memworker/asyncapi.json"

// LoadValidator reads the document at path (YAML or JSON).
func LoadValidator(path string) (*Validator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	doc, err := decode(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	c.AssertFormat()
	if err := c.AddResource(docURL, doc); err != nil {
		return nil, err
	}
	return &Validator{c: c, by: map[string]*jsonschema.Schema{}}, nil
}

// decode turns YAML or JSON into the values jsonschema validates.
func decode(raw []byte) (any, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(js))
}

// Has reports whether the document has the component schema name.
func (v *Validator) Has(name string) bool {
	_, err := v.compile(name)
	return err == nil
}

func (v *Validator) compile(name string) (*jsonschema.Schema, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.by[name]; ok {
		return s, nil
	}
	s, err := v.c.Compile(docURL + "#/components/schemas/" + name)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	v.by[name] = s
	return s, nil
}

// Validate checks a JSON message body against the component schema name.
func (v *Validator) Validate(name string, body []byte) error {
	s, err := v.compile(name)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := s.Validate(inst); err != nil {
		return fmt.Errorf("against %s: %w", name, err)
	}
	return nil
}
