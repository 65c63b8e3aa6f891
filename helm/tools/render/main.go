// Command render is a small stand-in for `helm template`: it renders a chart with Go's text/template
// and Masterminds' sprig, the same engine Helm uses, on machines where helm itself is not installed.
//
// It implements the part of Helm the celltap chart relies on:
//   - .Values: chart values deep-merged with -f files, parsed like Helm with sigs.k8s.io/yaml (so
//     numbers are float64); a null in a later file deletes the key;
//   - .Release, .Chart, .Capabilities (with Chart.yaml's kubeVersion enforced), .Template;
//   - .Files: Get, GetBytes, Glob, AsConfig, AsSecrets, Lines;
//   - include, tpl, required, lookup (always empty, as in `helm template`), toYaml, fromYaml,
//     fromYamlArray, toJson, fromJson, fromJsonArray, and sprig's functions minus env/expandenv
//     (which Helm removes too).
//
// Partials (files starting with "_") are parsed but not emitted; each rendered document is preceded
// by "# Source: <chart>/templates/<file>", as Helm does.
//
// Usage: render [-f values.yaml]... [--name RELEASE] [--namespace NS] [--kube-version v1.30.0]
//
//	[--api-versions group/version]... [--notes] CHART_DIR
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	// Debian keeps semver v3 at its GOPATH path without the /v3 suffix.
	semver "github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Files is the chart's non-template files, keyed by path relative to the chart root (like Helm's).
type Files map[string][]byte

// Get returns a file's content as a string ("" when missing).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's content.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Glob returns the files whose path matches the pattern ("*" does not cross "/").
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// AsConfig renders the files as a ConfigMap data block: base name -> content.
func (f Files) AsConfig() string {
	m := map[string]string{}
	for name, data := range f {
		m[path.Base(name)] = string(data)
	}
	return toYAML(m)
}

// AsSecrets renders the files as a Secret data block: base name -> base64 content.
func (f Files) AsSecrets() string {
	m := map[string]string{}
	for name, data := range f {
		m[path.Base(name)] = base64.StdEncoding.EncodeToString(data)
	}
	return toYAML(m)
}

// Lines splits a file into lines.
func (f Files) Lines(name string) []string {
	s := string(f[name])
	if s == "" {
		return []string{}
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// APIVersions answers .Capabilities.APIVersions.Has.
type APIVersions []string

// Has reports whether an API group/version (or group/version/Kind) is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// readYAMLMap parses YAML as Helm's chartutil.ReadValues does: sigs.k8s.io/yaml converts it to JSON
// first, so maps are string-keyed and every number is a float64.
func readYAMLMap(data []byte) (map[string]interface{}, error) {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if m == nil { // an empty file is JSON null
		m = map[string]interface{}{}
	}
	return m, nil
}

// mergeValues deep-merges src over dst, like Helm's coalescing of user values over chart defaults
// (a null in src deletes the key).
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// toYAML is Helm's toYaml: sigs.k8s.io/yaml (JSON field order, sorted keys), no trailing newline,
// "" on error.
func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

// fromYAML is Helm's fromYaml: a parse error comes back under the "Error" key.
func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// fromJSONArray is Helm's fromJsonArray: a parse error comes back as the only element.
func fromJSONArray(s string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

// fromYAMLArray is Helm's fromYamlArray: a parse error comes back as the only element.
func fromYAMLArray(s string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

type renderer struct {
	tmpl *template.Template
}

func (r *renderer) funcs() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	f["fromJsonArray"] = fromJSONArray
	f["fromYamlArray"] = fromYAMLArray
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := r.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := r.tmpl.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	return f
}

func run() error {
	var valueFiles, apiVersions multiFlag
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Var(&apiVersions, "api-versions", "API versions for .Capabilities.APIVersions.Has (repeatable)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	notes := flag.Bool("notes", false, "render templates/NOTES.txt only (what `helm install` prints)")
	flag.Parse()
	if flag.NArg() != 1 {
		return errors.New("usage: render [-f values.yaml]... [--name N] [--namespace NS] CHART_DIR")
	}
	chartDir := flag.Arg(0)

	chartData, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chartMeta, err := readYAMLMap(chartData)
	if err != nil {
		return fmt.Errorf("Chart.yaml: %w", err)
	}
	chart := map[string]interface{}{}
	for k, v := range chartMeta {
		// Helm exposes Chart.yaml's keys capitalised (.Chart.Name, .Chart.AppVersion).
		chart[strings.ToUpper(k[:1])+k[1:]] = v
	}
	chartName, _ := chart["Name"].(string)

	values := map[string]interface{}{}
	if data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml")); err == nil {
		if values, err = readYAMLMap(data); err != nil {
			return fmt.Errorf("values.yaml: %w", err)
		}
	}
	for _, vf := range valueFiles {
		data, err := os.ReadFile(vf)
		if err != nil {
			return err
		}
		m, err := readYAMLMap(data)
		if err != nil {
			return fmt.Errorf("%s: %w", vf, err)
		}
		values = mergeValues(values, m)
	}

	files := Files{}
	templates := map[string]string{}
	err = filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			templates[rel] = string(data)
		} else if rel != "Chart.yaml" && rel != "values.yaml" && rel != "values.schema.json" {
			files[rel] = data
		}
		return nil
	})
	if err != nil {
		return err
	}

	r := &renderer{}
	r.tmpl = template.New("gotpl").Funcs(r.funcs()).Option("missingkey=zero")
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		full := chartName + "/" + n
		if _, err := r.tmpl.New(full).Parse(templates[n]); err != nil {
			return err
		}
	}

	// Like Helm: refuse a Kubernetes version outside the chart's kubeVersion constraint.
	if constraint, ok := chart["KubeVersion"].(string); ok && constraint != "" {
		c, err := semver.NewConstraint(constraint)
		if err != nil {
			return fmt.Errorf("Chart.yaml kubeVersion %q: %w", constraint, err)
		}
		v, err := semver.NewVersion(*kubeVersion)
		if err != nil {
			return fmt.Errorf("--kube-version %q: %w", *kubeVersion, err)
		}
		if !c.Check(v) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s",
				constraint, *kubeVersion)
		}
	}
	major := strings.TrimPrefix(strings.SplitN(*kubeVersion, ".", 2)[0], "v")
	minor := strings.SplitN(*kubeVersion+".", ".", 3)[1]
	caps := map[string]interface{}{
		"KubeVersion": map[string]interface{}{"Version": *kubeVersion, "GitVersion": *kubeVersion,
			"Major": major, "Minor": minor},
		"APIVersions": APIVersions(append([]string{"v1", "apps/v1", "policy/v1", "batch/v1"}, apiVersions...)),
	}
	release := map[string]interface{}{"Name": *name, "Namespace": *namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1}

	var out bytes.Buffer
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") || !(strings.HasSuffix(n, ".yaml") ||
			strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".tpl") || strings.HasSuffix(n, ".txt")) {
			continue
		}
		if strings.HasSuffix(n, "NOTES.txt") != *notes {
			continue // Helm prints NOTES after install; `helm template` leaves it out
		}
		full := chartName + "/" + n
		data := map[string]interface{}{
			"Values": values, "Release": release, "Chart": chart, "Files": files, "Capabilities": caps,
			"Template": map[string]interface{}{"Name": full, "BasePath": chartName + "/templates"},
		}
		var buf bytes.Buffer
		if err := r.tmpl.ExecuteTemplate(&buf, full, data); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		if *notes {
			out.WriteString(text)
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", full, strings.TrimRight(text, "\n"))
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}
