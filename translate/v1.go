package translate

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
)

// The kernel gives cgroup v1 no containment at all: a uid that owns a v1
// cgroup can write anything in it. These files are guarded everywhere
// (the files exist only on v1).
func init() {
	// release_agent and notify_on_release make host root run a program
	// (CVE-2022-0492).
	register("release_agent", &controlFile{guard: guard{rule: access.RuleV1ReleaseAgent}})
	register("notify_on_release", &controlFile{guard: guard{rule: access.RuleV1ReleaseAgent}})
	// Below the root a container may narrow its device access
	// (devices.deny), never widen it; at the root both are root-locked.
	register("devices.allow", &controlFile{guard: guard{rule: access.RuleV1DevicesAllow, belowRoot: true}})
	// cgroup.event_control: see events.go.
}

// cloneCpuset gives a new v1 cpuset cgroup its parent's cpus and mems:
// an empty cpuset takes no tasks (ENOSPC), so the container could not
// use the cgroup it just made (what cgroup.clone_children would do).
func (v *View) cloneCpuset(parent, child string) error {
	for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
		val, err := v.host.ReadFile(host.Join(parent, file))
		if errors.Is(err, unix.ENOENT) {
			return nil // not a cpuset hierarchy
		}
		if err != nil {
			return err
		}
		if len(val) == 0 || val[0] == '\n' {
			continue
		}
		if _, err := v.host.WriteFile(host.Join(child, file), val); err != nil {
			return err
		}
	}
	return nil
}
