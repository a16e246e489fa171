// Command kindcheck loads kind cluster configs the way `kind create cluster --config` reads
// them, without Docker, and exits non-zero naming every problem it finds.
//
// kind's own loader and validator live under sigs.k8s.io/kind/pkg/internal (not importable), so
// this uses the public pieces they are built on: the v1alpha4 types, strict YAML decoding with the
// same YAML library (an unknown or misspelt key is an error, as in kind), and the v1alpha4
// defaults. On top of that it checks what kind would refuse or what would break the cluster
// later: node roles, a control-plane node, port numbers, and node labels the kubelet accepts.
//
// Usage: kindcheck FILE...
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

const (
	wantAPIVersion = "kind.x-k8s.io/v1alpha4"
	wantKind       = "Cluster"
)

// Kubernetes label syntax (the kubelet refuses a node label outside it, so node registration
// fails long after `kind create` started): an optional DNS-subdomain prefix, a name, a value.
var (
	labelPrefix = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelName   = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	labelValue  = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
)

type typeMeta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kindcheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if problems := checkFile(path); len(problems) > 0 {
			failed = true
			for _, p := range problems {
				fmt.Fprintf(os.Stderr, "%s: %v\n", path, p)
			}
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func checkFile(path string) []error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []error{err}
	}
	cfg, err := decode(raw)
	if err != nil {
		return []error{err}
	}
	return validate(cfg)
}

// decode reads exactly one v1alpha4 Cluster document, refusing unknown fields.
func decode(raw []byte) (*v1alpha4.Cluster, error) {
	var tm typeMeta
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return nil, fmt.Errorf("cannot read kind / apiVersion: %w", err)
	}
	if tm.APIVersion != wantAPIVersion || tm.Kind != wantKind {
		return nil, fmt.Errorf("want apiVersion %s, kind %s; got %q, %q", wantAPIVersion, wantKind, tm.APIVersion, tm.Kind)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	cfg := &v1alpha4.Cluster{}
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("unable to decode config: %w", err)
	}
	// kind reads the first document only; a second one would be silently ignored there.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document: kind would ignore all but the first")
	}
	v1alpha4.SetDefaultsCluster(cfg)
	return cfg, nil
}

func validate(cfg *v1alpha4.Cluster) []error {
	var problems []error
	controlPlanes := 0
	for i, node := range cfg.Nodes {
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
		default:
			problems = append(problems, fmt.Errorf("nodes[%d]: %q is not a node role (control-plane or worker)", i, node.Role))
		}
		for key, value := range node.Labels {
			if err := checkLabel(key, value); err != nil {
				problems = append(problems, fmt.Errorf("nodes[%d].labels: %w", i, err))
			}
		}
		for j, m := range node.ExtraPortMappings {
			// -1 lets the container runtime pick the host port (kind documents it).
			if m.HostPort < -1 || m.HostPort > 65535 || m.ContainerPort < 0 || m.ContainerPort > 65535 {
				problems = append(problems, fmt.Errorf("nodes[%d].extraPortMappings[%d]: port out of range", i, j))
			}
		}
	}
	if controlPlanes == 0 {
		problems = append(problems, errors.New("must have at least one control-plane node"))
	}
	return problems
}

func checkLabel(key, value string) error {
	name := key
	if prefix, rest, found := strings.Cut(key, "/"); found {
		name = rest
		if len(prefix) > 253 || !labelPrefix.MatchString(prefix) {
			return fmt.Errorf("key %q: prefix must be a DNS subdomain", key)
		}
	}
	if len(name) == 0 || len(name) > 63 || !labelName.MatchString(name) {
		return fmt.Errorf("key %q: name must be 1-63 alphanumerics, '-', '_' or '.'", key)
	}
	if len(value) > 63 || !labelValue.MatchString(value) {
		return fmt.Errorf("label %s: value %q must be at most 63 alphanumerics, '-', '_' or '.'", key, value)
	}
	return nil
}
