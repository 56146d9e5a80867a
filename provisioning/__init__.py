"""Getting compute: worker launchers (local processes, EC2) and the AWS cluster set-up."""
