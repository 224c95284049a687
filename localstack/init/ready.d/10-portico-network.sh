#!/usr/bin/env bash
# LocalStack ready hook: the network a portico-aws developer needs to try the
# provider by hand (the tests create their own): one VPC, a public and a
# private subnet in each of two zones tagged for subnet discovery, and two
# instances to use as node targets. Idempotent by the VPC's Name tag.
set -euo pipefail

CLUSTER="${CLUSTER_NAME:-portico-dev}"
REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="$REGION"

existing=$(awslocal ec2 describe-vpcs --filters "Name=tag:Name,Values=$CLUSTER" \
    --query 'Vpcs[0].VpcId' --output text)
if [[ "$existing" != "None" && -n "$existing" ]]; then
    echo "portico: VPC $existing for $CLUSTER already exists"
    exit 0
fi

vpc=$(awslocal ec2 create-vpc --cidr-block 10.42.0.0/16 \
    --tag-specifications "ResourceType=vpc,Tags=[{Key=Name,Value=$CLUSTER}]" \
    --query Vpc.VpcId --output text)
echo "portico: VPC $vpc"

i=0
first_subnet=""
for zone in "${REGION}a" "${REGION}b"; do
    public=$(awslocal ec2 create-subnet --vpc-id "$vpc" --availability-zone "$zone" \
        --cidr-block "10.42.$((i * 2)).0/24" \
        --tag-specifications "ResourceType=subnet,Tags=[{Key=Name,Value=$CLUSTER-public-$zone},{Key=kubernetes.io/role/elb,Value=1},{Key=kubernetes.io/cluster/$CLUSTER,Value=shared}]" \
        --query Subnet.SubnetId --output text)
    private=$(awslocal ec2 create-subnet --vpc-id "$vpc" --availability-zone "$zone" \
        --cidr-block "10.42.$((i * 2 + 1)).0/24" \
        --tag-specifications "ResourceType=subnet,Tags=[{Key=Name,Value=$CLUSTER-private-$zone},{Key=kubernetes.io/role/internal-elb,Value=1},{Key=kubernetes.io/cluster/$CLUSTER,Value=shared}]" \
        --query Subnet.SubnetId --output text)
    echo "portico: $zone public $public private $private"
    first_subnet="${first_subnet:-$private}"
    awslocal ec2 run-instances --image-id ami-12c6146b --instance-type t3.micro \
        --subnet-id "$private" --count 1 \
        --tag-specifications "ResourceType=instance,Tags=[{Key=Name,Value=$CLUSTER-node-$zone},{Key=kubernetes.io/cluster/$CLUSTER,Value=owned}]" \
        --query 'Instances[0].InstanceId' --output text
    i=$((i + 1))
done
echo "portico: network for cluster $CLUSTER ready (vpc $vpc)"
