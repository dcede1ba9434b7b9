# bash completion for uzram(8). The binary completes itself: its commands
# and options from the CLI's definition, and device names from the running
# daemon (`uzram WORDS... --generate-bash-completion`).

_uzram() {
	local cur words cword
	if declare -F _init_completion >/dev/null; then
		_init_completion -n "=:" || return
	else
		cur=${COMP_WORDS[COMP_CWORD]}
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	fi
	local ask=("${words[@]:0:cword}")
	# The word under the cursor goes along only when it is an option, so
	# that the command lists options rather than arguments.
	[[ $cur == -* ]] && ask+=("$cur")
	local IFS=$'\n'
	# shellcheck disable=SC2207 # one candidate a line, IFS is a newline
	COMPREPLY=($(compgen -W "$("${ask[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}

complete -o bashdefault -o default -F _uzram uzram
