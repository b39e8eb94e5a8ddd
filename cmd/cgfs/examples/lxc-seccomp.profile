2
denylist
[all]
statfs notify
fstatfs notify
mount notify
clone3 errno 38
fsopen errno 38
