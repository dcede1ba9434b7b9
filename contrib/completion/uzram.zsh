#compdef uzram
# zsh completion for uzram(8), installed as _uzram. The binary completes
# itself: its commands and options from the CLI's definition, and device
# names from the running daemon (`uzram WORDS... --generate-bash-completion`).

_uzram() {
	local -a opts
	local cur=${words[CURRENT]}
	local -a ask=("${(@)words[1,CURRENT-1]}")
	[[ $cur == -* ]] && ask+=("$cur")
	opts=("${(@f)$("${(@)ask}" --generate-bash-completion 2>/dev/null)}")
	if [[ -n ${opts[1]} ]]; then
		compadd -a opts
	else
		_files
	fi
}

_uzram "$@"
