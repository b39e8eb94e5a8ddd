// Package access decides who is calling cgfs and what they may do.
//
// A FUSE request carries the calling thread's id as the host sees it. A
// Request identifies that thread (its capabilities, user namespace and,
// for task files, pid namespace) at most once, and only when a decision
// needs it. Policy judges callers against the view's owner (the user
// namespace that owns the container) on plain facts the view gives it
// (attributes, whether a file is at the view root or delegated), and
// names the rule behind every refusal so the host log and metrics can say
// why. Refusal is also how the rest of cgfs names the answers it makes
// itself.
package access
